"""The MLflow model registry from inside a step: register with lineage, aliases, promotion gates.

:func:`register_model` logs a model to the running step's child run
(scikit-learn through ``mlflow.sklearn``, anything else through a pyfunc
wrapper), always with explicit ``pip_requirements`` (inferring them costs
~10 s per model), registers it, and tags the version with mlpipe's lineage:
run, pipeline, step, cache key, code fingerprint, the step's input artifacts,
and the content digest of the data sets given, which are also logged as
``mlflow.data`` inputs carrying mlpipe's own content digest (XXH3-128) as their digest.

:func:`promote` moves an alias (``champion``) to a version only when every
gate passes, and records the decision and its reasons on the version's tags
either way, so the registry says why a model is, or is not, the champion.
"""

from __future__ import annotations

import importlib.metadata
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict

from mlpipe.errors import MlpipeError
from mlpipe.fingerprint import external_system
from mlpipe.integrations.mlflow._tracker import _GLOBAL_URI, MlflowStep, client_for, import_mlflow
from mlpipe.tracking import ActiveStep, active_step

__all__ = [
    "BetterThanChampion",
    "Gate",
    "GateResult",
    "MetricThreshold",
    "ModelVersionRef",
    "Promotion",
    "load_model",
    "promote",
    "register_model",
]


# A step that calls register_model or promote acts on the registry of its tracking server, which the
# store cannot see: such a step is not cached unless declared with cache=True (docs/caching.md).
_REGISTRY = "the MLflow model registry"


class ModelVersionRef(BaseModel):
    """A registered model version, as a step output (stored by mlpipe as JSON).

    Attributes:
        name: Registered model name.
        version: Version number (MLflow's string).
        model_uri: ``models:/<name>/<version>``.
        mlflow_run_id: The step's child run that logged the model.
        logged_model_uri: The logged model's own URI (``models:/m-...``).
        mlpipe_run_id: The mlpipe run that produced it.
        step: The step that registered it.
        aliases: Aliases set at registration.
        data_digests: Content digest of each data set given, by its context name.
    """

    model_config = ConfigDict(frozen=True)

    name: str
    version: str
    model_uri: str
    mlflow_run_id: str
    logged_model_uri: str
    mlpipe_run_id: str
    step: str
    aliases: tuple[str, ...] = ()
    data_digests: dict[str, str] = {}


class Promotion(BaseModel):
    """The outcome of :func:`promote`, also recorded on the version's tags.

    Attributes:
        name: Registered model name.
        version: The candidate version.
        alias: The alias at stake (``champion``).
        promoted: Whether the alias now points at the candidate.
        reasons: One line per gate: what was compared, and the verdict.
        previous: The version the alias pointed at before, if any.
    """

    model_config = ConfigDict(frozen=True)

    name: str
    version: str
    alias: str
    promoted: bool
    reasons: tuple[str, ...]
    previous: str | None = None


@dataclass(frozen=True)
class GateResult:
    passed: bool
    reason: str


@dataclass(frozen=True)
class Candidate:
    """What a gate sees of a model version: metrics on one evaluation data set."""

    version: str
    metrics: Mapping[str, float]
    evaluation_digest: str | None


class Gate(ABC):
    """A condition a candidate must meet to take the alias. Subclass it for your own."""

    @abstractmethod
    def check(self, candidate: Candidate, champion: Candidate | None) -> GateResult:
        """Decide, with a one-line reason. ``champion`` is None when the alias is unset."""

    def champion_metric(self) -> str | None:
        """The metric this gate needs of the current champion, if any (to re-score it)."""
        return None


@dataclass(frozen=True)
class MetricThreshold(Gate):
    """Pass when the candidate's ``metric`` is at least ``min`` and at most ``max``."""

    metric: str
    min: float | None = None
    max: float | None = None

    def check(self, candidate: Candidate, champion: Candidate | None) -> GateResult:
        value = candidate.metrics.get(self.metric)
        if value is None:
            return GateResult(False, f"{self.metric}: missing from the candidate's metrics {sorted(candidate.metrics)}")
        if self.min is not None and value < self.min:
            return GateResult(False, f"{self.metric} = {value:g} is below the threshold {self.min:g}")
        if self.max is not None and value > self.max:
            return GateResult(False, f"{self.metric} = {value:g} is above the threshold {self.max:g}")
        limits = [
            f">= {self.min:g}" if self.min is not None else "",
            f"<= {self.max:g}" if self.max is not None else "",
        ]
        bounds = " and ".join(b for b in limits if b)
        return GateResult(True, f"{self.metric} = {value:g} meets {bounds or 'no bound'}")


@dataclass(frozen=True)
class BetterThanChampion(Gate):
    """Pass when the candidate beats the current champion on the same evaluation data.

    The champion's metric must be known on the *same* data (same content
    digest): recorded when it was promoted on that data, or computed by
    re-scoring it with ``scorer`` given to :func:`promote`. With no champion
    yet, the gate passes.

    Attributes:
        metric: Metric name.
        higher_is_better: False for losses.
        min_delta: How much better the candidate must be.
    """

    metric: str
    higher_is_better: bool = True
    min_delta: float = 0.0

    def champion_metric(self) -> str | None:
        return self.metric

    def check(self, candidate: Candidate, champion: Candidate | None) -> GateResult:
        value = candidate.metrics.get(self.metric)
        if value is None:
            return GateResult(False, f"{self.metric}: missing from the candidate's metrics {sorted(candidate.metrics)}")
        if champion is None:
            return GateResult(True, f"{self.metric} = {value:g}; there is no champion yet")
        theirs = champion.metrics.get(self.metric)
        if theirs is None:
            return GateResult(
                False,
                f"champion v{champion.version} has no {self.metric} on evaluation data "
                f"{(candidate.evaluation_digest or '?')[:12]}; pass scorer= to promote() to re-score it",
            )
        delta = value - theirs if self.higher_is_better else theirs - value
        verdict = delta > self.min_delta if self.min_delta else delta > 0
        word = "beats" if verdict else "does not beat"
        margin = f" by more than {self.min_delta:g}" if self.min_delta else ""
        return GateResult(
            verdict,
            f"{self.metric} = {value:g} {word} champion v{champion.version} ({theirs:g}){margin} on the same "
            f"evaluation data {(candidate.evaluation_digest or '?')[:12]}",
        )


# -- helpers ----------------------------------------------------------------------------------


def _require_step(what: str) -> tuple[ActiveStep, MlflowStep]:
    current = active_step()
    if current is None or not isinstance(current.handle, MlflowStep):
        raise MlpipeError(
            f"{what} must be called inside a step of a run tracked in MLflow; set tracking_uri in the "
            "profile (or MLFLOW_TRACKING_URI) and run the pipeline"
        )
    return current, current.handle


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _is_sklearn(model: Any) -> bool:
    return any(cls.__module__.split(".")[0] == "sklearn" for cls in type(model).__mro__)


def _dataset_digest(current: ActiveStep, data: Any) -> str:
    """mlpipe's content digest of ``data``: the input artifact's digest, or the digest of its stored bytes."""
    found = current.input_digest(data)
    if found is not None:
        return found
    import io

    from mlpipe.hashing import digest_object
    from mlpipe.materializers import for_value

    buffer = io.BytesIO()
    for_value(data).save(data, buffer)
    return digest_object(buffer.getvalue())


def _log_datasets(current: ActiveStep, datasets: Mapping[str, Any]) -> dict[str, str]:
    mlflow = import_mlflow()
    digests: dict[str, str] = {}
    for context, data in datasets.items():
        digest = _dataset_digest(current, data)
        digests[context] = digest
        try:
            dataset = mlflow.data.from_pandas(data, name=context, digest=digest[:36])
        except Exception:  # not a DataFrame: numpy or anything mlflow.data has no constructor for
            dataset = mlflow.data.from_numpy(_as_numpy(data), name=context, digest=digest[:36])
        mlflow.log_input(dataset, context=context, tags={"mlpipe.digest": digest})
    return digests


def _as_numpy(data: Any) -> Any:
    import numpy as np

    return np.asarray(data)


def _lineage_tags(current: ActiveStep) -> dict[str, str]:
    tags = {
        "mlpipe.run_id": current.run_id,
        "mlpipe.pipeline": current.pipeline,
        "mlpipe.step": current.step,
        "mlpipe.cache_key": current.key,
    }
    store_url = current.tracking.store_url
    for name, inp in current.inputs.items():
        if inp.get("kind") == "artifact":
            tags[f"mlpipe.input.{name}"] = f"{store_url}/objects/{inp['digest'][:2]}/{inp['digest']}"
    return tags


@external_system(_REGISTRY)
def register_model(
    model: Any,
    name: str,
    *,
    datasets: Mapping[str, Any] | None = None,
    aliases: Sequence[str] = ("challenger",),
    input_example: Any = None,
    pip_requirements: Sequence[str] | None = None,
    artifact_name: str = "model",
    skops_trusted_types: Sequence[str] | None = None,
    description: str | None = None,
    tags: Mapping[str, str] | None = None,
) -> ModelVersionRef:
    """Log ``model`` to the running step's child run and register it as a new version of ``name``.

    scikit-learn estimators use the ``sklearn`` flavor (skops format), anything
    with a ``predict`` method (or a callable) a pyfunc wrapper. The version is
    tagged with the mlpipe lineage; ``datasets`` (context name → DataFrame or
    array, e.g. ``{"training": train_df}``) are logged as ``mlflow.data``
    inputs whose digest is mlpipe's content hash of the artifact.

    Args:
        model: The trained model.
        name: Registered model name.
        datasets: Data the model was trained or evaluated on, by context.
        aliases: Aliases to point at the new version (``challenger`` by default).
        input_example: An input sample, stored with the model (infers a signature).
        pip_requirements: Requirements of the model's environment; by default
            pinned versions of the model's own libraries (never inferred, which is slow).
        artifact_name: Name of the model in the run.
        skops_trusted_types: scikit-learn models are saved with skops, which
            loads only types known to be safe; tree ensembles need
            ``["sklearn.tree._tree.Tree"]`` here (trust types you have reviewed).
        description: Version description.
        tags: Extra version tags.

    Returns:
        A :class:`ModelVersionRef`, a good output for the step.

    Raises:
        MlpipeError: called outside a step of an MLflow-tracked run.
    """
    current, handle = _require_step("register_model()")
    mlflow = import_mlflow()
    client = handle.tracker.client
    with handle.activate() if _needs_activation(handle) else nullcontext():
        digests = _log_datasets(current, datasets or {})
        if _is_sklearn(model):
            import mlflow.sklearn

            requirements = list(pip_requirements or mlflow.sklearn.get_default_pip_requirements(include_skops=True))
            try:
                info = mlflow.sklearn.log_model(
                    model,
                    name=artifact_name,
                    pip_requirements=requirements,
                    input_example=input_example,
                    skops_trusted_types=list(skops_trusted_types) if skops_trusted_types else None,
                )
            except mlflow.exceptions.MlflowException as exc:
                if "untrusted types" not in str(exc):
                    raise
                found = str(exc).split("Untrusted types found in the file:", 1)[-1].split("]", 1)[0] + "]"
                raise MlpipeError(
                    f"register_model({name!r}): the {type(model).__name__} model holds types skops does not load "
                    f"by default: {found.strip()}. Review them and pass skops_trusted_types=[...] to "
                    "register_model (a tree ensemble needs 'sklearn.tree._tree.Tree')",
                    step=current.step,
                ) from exc
        else:
            import mlflow.pyfunc

            from mlpipe.integrations.mlflow._pyfunc import ModelPredictor

            top = type(model).__module__.split(".")[0]
            defaults = [f"cloudpickle=={_version('cloudpickle')}"]
            if top not in ("builtins", "__main__") and _version(top):
                defaults.append(f"{top}=={_version(top)}")
            info = mlflow.pyfunc.log_model(
                name=artifact_name,
                python_model=ModelPredictor(model),
                pip_requirements=list(pip_requirements or defaults),
                input_example=input_example,
            )
    version_tags = {**_lineage_tags(current), **{f"mlpipe.data.{c}.digest": d for c, d in digests.items()}}
    version_tags.update(tags or {})
    parent = client.get_run(handle.id).data.tags.get("mlflow.parentRunId")
    if parent:
        version_tags["mlpipe.mlflow_parent_run_id"] = parent
        commit = client.get_run(parent).data.tags.get("mlflow.source.git.commit")
        if commit:
            version_tags["mlflow.source.git.commit"] = commit
    _ensure_registered_model(client, name)
    mv = client.create_model_version(
        name,
        source=str(info.model_uri),
        run_id=handle.id,
        tags=version_tags,
        description=description,
        model_id=getattr(info, "model_id", None),
    )
    for alias in aliases:
        client.set_registered_model_alias(name, alias, mv.version)
    handle.set_tags({"mlpipe.registered_model": f"{name}/{mv.version}"})
    return ModelVersionRef(
        name=name,
        version=str(mv.version),
        model_uri=f"models:/{name}/{mv.version}",
        mlflow_run_id=handle.id,
        logged_model_uri=str(info.model_uri),
        mlpipe_run_id=current.run_id,
        step=current.step,
        aliases=tuple(aliases),
        data_digests=digests,
    )


def _ensure_registered_model(client: Any, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name, tags={"mlpipe.managed": "true"})
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise


def _needs_activation(handle: MlflowStep) -> bool:
    """True when this thread's active MLflow run is not the step's (a thread the step started itself)."""
    mlflow = import_mlflow()
    active = mlflow.active_run()
    return active is None or active.info.run_id != handle.id


def _metrics_of(metrics: Mapping[str, float] | BaseModel) -> dict[str, float]:
    if isinstance(metrics, BaseModel):
        return _model_numbers(metrics)
    return {k: float(v) for k, v in metrics.items()}


def _model_numbers(model: BaseModel) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in model:
        if isinstance(value, int | float) and not isinstance(value, bool):
            out[key] = float(value)
    return out


def _eval_key(digest: str, metric: str) -> str:
    return f"mlpipe.eval.{digest[:16]}.{metric}"


@external_system(_REGISTRY)
def promote(
    candidate: ModelVersionRef,
    metrics: Mapping[str, float] | BaseModel,
    *,
    gates: Gate | Sequence[Gate],
    evaluation_data: Any = None,
    evaluation_digest: str | None = None,
    scorer: Callable[[Any, Any], Mapping[str, float] | BaseModel] | None = None,
    alias: str = "champion",
) -> Promotion:
    """Point ``alias`` at ``candidate`` if every gate passes; record the decision either way.

    The candidate's ``metrics`` are recorded on its version, keyed by the
    evaluation data's content digest, so a later candidate evaluated on the
    same data can be compared with it. For :class:`BetterThanChampion`, the
    current champion's metric on the same data comes from its tags, or, if it
    was never evaluated on this data, from ``scorer(champion_model,
    evaluation_data)`` (the champion loaded as a pyfunc model).

    The version gets ``mlpipe.promotion.<alias>`` (``promoted`` or
    ``rejected``) and ``mlpipe.promotion.<alias>.reason`` tags; a replaced
    champion gets ``mlpipe.demoted.<alias>``.

    Args:
        candidate: The version to promote (from :func:`register_model`).
        metrics: The candidate's metrics on the evaluation data (a pydantic model works).
        gates: One gate or several; all must pass.
        evaluation_data: The evaluation data set (an input of the step, for its digest).
        evaluation_digest: Its digest, when the data itself is not at hand.
        scorer: Re-scores the champion on ``evaluation_data`` when needed.
        alias: The alias to move.

    Returns:
        The :class:`Promotion`, a good output for the step.
    """
    from mlflow.exceptions import MlflowException

    current = active_step()
    client = (
        current.handle.tracker.client
        if current is not None and isinstance(current.handle, MlflowStep)
        else client_for(import_mlflow().get_tracking_uri())
    )
    gate_list = [gates] if isinstance(gates, Gate) else list(gates)
    values = _metrics_of(metrics)
    digest = evaluation_digest
    if digest is None and evaluation_data is not None:
        digest = _dataset_digest(current, evaluation_data) if current is not None else None
    own_tags = {f"mlpipe.metric.{k}": repr(v) for k, v in values.items()}
    if digest:
        own_tags["mlpipe.eval_digest"] = digest
        own_tags.update({_eval_key(digest, k): repr(v) for k, v in values.items()})
    for key, value in own_tags.items():
        client.set_model_version_tag(candidate.name, candidate.version, key, value)
    cand = Candidate(candidate.version, values, digest)

    try:
        holder = client.get_model_version_by_alias(candidate.name, alias)
    except MlflowException:
        holder = None
    previous = str(holder.version) if holder is not None else None
    champion: Candidate | None = None
    if holder is not None:
        if previous == candidate.version:
            champion = None
        else:
            champion_metrics: dict[str, float] = {}
            if digest:
                prefix = f"mlpipe.eval.{digest[:16]}."
                for key, text in (holder.tags or {}).items():
                    if key.startswith(prefix):
                        champion_metrics[key[len(prefix) :]] = float(text)
            wanted = {m for m in (g.champion_metric() for g in gate_list) if m}
            if wanted - set(champion_metrics) and scorer is not None and evaluation_data is not None:
                loaded = load_model(f"models:/{candidate.name}/{previous}", tracking_uri=client.tracking_uri)
                scored = _metrics_of(scorer(_unwrap(loaded), evaluation_data))
                champion_metrics.update(scored)
                if digest:
                    for metric, number in scored.items():
                        client.set_model_version_tag(
                            candidate.name, str(previous), _eval_key(digest, metric), repr(number)
                        )
            champion = Candidate(str(previous), champion_metrics, digest)

    if previous == candidate.version:
        results = [GateResult(True, f"v{candidate.version} already holds {alias!r}")]
    else:
        results = [gate.check(cand, champion) for gate in gate_list]
    passed = all(r.passed for r in results)
    reasons = tuple(("PASS " if r.passed else "FAIL ") + r.reason for r in results)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    decision = "promoted" if passed else "rejected"
    client.set_model_version_tag(candidate.name, candidate.version, f"mlpipe.promotion.{alias}", decision)
    why = f"{stamp} {decision}: " + "; ".join(reasons)
    client.set_model_version_tag(candidate.name, candidate.version, f"mlpipe.promotion.{alias}.reason", why)
    if passed and previous != candidate.version:
        client.set_registered_model_alias(candidate.name, alias, candidate.version)
        if previous is not None:
            client.set_model_version_tag(
                candidate.name, previous, f"mlpipe.demoted.{alias}", f"{stamp} replaced by v{candidate.version}"
            )
    if current is not None and isinstance(current.handle, MlflowStep):
        current.handle.set_tags({f"mlpipe.promotion.{alias}": f"{decision} {candidate.name}/{candidate.version}"})
    return Promotion(
        name=candidate.name,
        version=candidate.version,
        alias=alias,
        promoted=passed,
        reasons=reasons,
        previous=previous,
    )


def _unwrap(loaded: Any) -> Any:
    """The user's model inside a pyfunc model when mlpipe wrapped it, else the pyfunc model."""
    try:
        inner = loaded.unwrap_python_model()
    except Exception:  # not a python_model-based pyfunc (a flavor such as sklearn)
        return loaded
    return getattr(inner, "model", inner)


def load_model(uri: str, *, tracking_uri: str | None = None) -> Any:
    """Load a model as pyfunc: ``load_model("models:/churn@champion", tracking_uri="http://mlflow:5000")``.

    Without ``tracking_uri``, mlflow's own (``MLFLOW_TRACKING_URI``) is used.
    """
    mlflow = import_mlflow()
    if tracking_uri is None:
        return mlflow.pyfunc.load_model(uri)
    with _GLOBAL_URI.use(tracking_uri):  # models:/ URIs resolve through mlflow's global registry URI
        return mlflow.pyfunc.load_model(uri)
