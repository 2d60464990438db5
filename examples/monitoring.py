"""Monitoring: score a new batch with the trained model, report drift against the training data, retrain on drift.

The model and its training data come from the latest succeeded run of the
training pipeline (``examples/training.py``), found through mlpipe's run
records; the script trains one first when the store has none. Run it with::

    python examples/monitoring.py                  # a drifted batch: drift report, then retraining
    python examples/monitoring.py --shift 0        # a batch like the training data: no retraining
    python examples/monitoring.py --corrupt        # bad data: the quality gate stops scoring

or run only the pipeline: ``mlpipe run examples/monitoring.py:monitoring -p shift=0.5``.
``mlpipe runs show <run>`` prints where the HTML drift report is.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import pandas as pd
import pydantic
from sklearn.datasets import load_breast_cancer
from sklearn.ensemble import RandomForestClassifier

import mlpipe as mp
from mlpipe import quality as q

TARGET = "target"
FEATURES = [str(name) for name in load_breast_cancer().feature_names]

# Every measurement is present and non-negative; a batch is worth scoring from 50 rows.
SCHEMA = q.Schema(
    columns={name: q.Column("float64", ge=0) for name in FEATURES},
    min_rows=50,
    strict=True,
    name="scoring batch",
)
check_batch = q.validate_step(SCHEMA, on_failure="stop", name="check_batch")
# A column drifts when PSI >= 0.2 and the test's p < 0.05; the batch drifts when a quarter of the columns do.
detect_drift = q.drift_step(share=0.25, on_drift="warn", title="Scoring batch vs training data")


class Decision(pydantic.BaseModel):
    retrain: bool
    reason: str
    drifted_columns: list[str]
    share_drifted: float
    scored: int
    positive_rate: float


def training_run(model_run: str = "latest") -> mp.Run:
    """A succeeded run of the training pipeline: the one named, or the latest in the store."""
    if model_run != "latest":
        return mp.get_run(model_run)
    for run in mp.runs(pipeline="training", limit=100):
        if run.status == "succeeded":
            return run
    raise LookupError(
        "no succeeded run of the training pipeline in this store; run "
        "`mlpipe run examples/training.py:training` (or this script, which does it for you) first"
    )


@mp.step(cache=False)  # "latest" may name a newer run each time; identical bytes keep downstream cached
def load_model(model_run: str = "latest") -> RandomForestClassifier:
    model: RandomForestClassifier = training_run(model_run).output("train")
    return model


@mp.step(cache=False)
def load_reference(model_run: str = "latest") -> pd.DataFrame:
    """The data the model was trained on, without the label."""
    frame: pd.DataFrame = training_run(model_run).output("split", "train_df")
    return frame.drop(columns=[TARGET]).reset_index(drop=True)


@mp.step
def new_batch(n: int = 400, shift: float = 0.5, corrupt: bool = False, seed: int = 7) -> pd.DataFrame:
    """This week's unlabelled data: a sample of the data set, its ten "mean *" measurements
    shifted by ``shift`` standard deviations (a recalibrated scanner, say)."""
    frame = load_breast_cancer(as_frame=True).frame.drop(columns=[TARGET])
    batch = frame.sample(n, replace=True, random_state=seed).reset_index(drop=True)
    moved = [c for c in FEATURES if c.startswith("mean ")]
    batch[moved] = batch[moved] + shift * frame[moved].std()
    if corrupt:
        batch.loc[0, "mean radius"] = -1.0
        batch.loc[1, "worst area"] = np.nan
    return batch


@mp.step
def score(model: RandomForestClassifier, batch: pd.DataFrame) -> pd.DataFrame:
    probability = model.predict_proba(batch[FEATURES])[:, 1]
    return pd.DataFrame({"probability": probability, "prediction": (probability >= 0.5).astype("int64")})


@mp.step
def decide(result: q.DriftResult, scores: pd.DataFrame) -> Decision:
    """The retraining trigger: retrain when the batch drifted past the threshold."""
    return Decision(
        retrain=result.drifted,
        reason=result.summary(),
        drifted_columns=result.drifted_columns,
        share_drifted=round(result.share_drifted, 4),
        scored=len(scores),
        positive_rate=round(float(scores["prediction"].mean()), 4),
    )


@mp.pipeline
def monitoring(
    model_run: str = "latest", n: int = 400, shift: float = 0.5, corrupt: bool = False, seed: int = 7
) -> Decision:
    model = load_model(model_run)
    reference = load_reference(model_run)
    batch, _report = check_batch(new_batch(n=n, shift=shift, corrupt=corrupt, seed=seed))
    scores = score(model, batch)
    result, _html = detect_drift(reference, batch)
    return decide(result, scores)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shift", type=float, default=0.5, help="simulated drift, in standard deviations")
    parser.add_argument("--n", type=int, default=400, help="rows in the batch")
    parser.add_argument("--corrupt", action="store_true", help="plant invalid values in the batch")
    parser.add_argument("--no-retrain", action="store_true", help="report only; do not trigger retraining")
    args = parser.parse_args(argv)

    from training import training  # examples/ is on sys.path when this file runs

    try:
        trained = training_run()
    except LookupError:
        print("no trained model in the store yet: running the training pipeline first")
        trained = training.run().raise_for_status()
    print(f"model: train output of training run {trained.id}")

    run = monitoring.run(model_run=trained.id, n=args.n, shift=args.shift, corrupt=args.corrupt)
    print(f"monitoring run {run.id}: {run.status}")
    if run.status != "succeeded":
        for step in run.steps.values():
            if step.status != "succeeded":
                print(f"  {step.name}: {step.status}: {step.error}")
        return 1
    for step in run.steps.values():
        for name, where in step.reports.items():
            print(f"drift report ({step.name}.{name}): {where}")
    decision: Decision = run.output("decide")
    print(f"{decision.reason}")
    print(f"scored {decision.scored} rows, {decision.positive_rate:.1%} predicted positive")
    if not decision.retrain:
        print("no retraining needed")
        return 0
    if args.no_retrain:
        print("retraining needed (skipped: --no-retrain)")
        return 0
    # The trigger. In production this submits the training pipeline on the newly labelled
    # window, e.g. training.submit(profile="prod"); the data set here is fixed, so it
    # retrains with a new seed, which is enough to show a new model being produced.
    seed = int(trained.params.get("seed", 0)) + 1
    print(f"drift passed the threshold: retraining (training pipeline, seed={seed})")
    retrained = training.run(seed=seed).raise_for_status()
    print(f"retrained: training run {retrained.id}: {retrained.output('evaluate')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
