"""Small pipelines for the Kubeflow backend's tests: every setting the compiler maps, and the ones it refuses."""

from __future__ import annotations

from typing import Any

import mlpipe as mp


@mp.step(
    retries=2,
    timeout=90.5,
    resources=mp.Resources(cpu=0.5, memory="1.5Gi", gpu=1, accelerator="nvidia-tesla-t4"),
    env={"MLPIPE_LOG": "debug"},
    image="registry.example/ml/train:1.0",
)
def fit(rows: list[float], lr: float = 0.1) -> float:
    return sum(rows) * lr


@mp.step(resources=mp.Resources(cpu=2, memory="4Gi", instance_type="m5.xlarge"), cache=False)
def prepare(n: int, tags: list[str], cfg: dict[str, Any]) -> list[float]:
    return [float(i) for i in range(n)]


@mp.step
def report(score: float, label: str | None = None) -> str:
    return f"{label or 'score'}={score}"


@mp.pipeline(name="Resource_Settings")
def settings(
    n: int = 3,
    lr: float = 2,
    tags: list[str] = ["a", "b"],
    cfg: dict[str, Any] = {"k": 1, "nested": {"x": 2}},
    label: str | None = None,
    flag: bool = True,
) -> str:
    return report(fit(prepare(n, tags=tags, cfg=cfg), lr=lr), label=label)


# -- refusals ---------------------------------------------------------------------------------


@mp.step
def one(x: int) -> int:
    return x


@mp.pipeline(name="collide")
def collide(x: int = 1) -> int:
    a = one.with_options(name="train_model")(x)
    return one.with_options(name="train__model")(a)


@mp.pipeline(name="long-name")
def long_name(x: int = 1) -> int:
    return one.with_options(name="s" * 64)(x)


@mp.pipeline(name="no-letters")
def no_letters(x: int = 1) -> int:
    return one.with_options(name="数据")(x)


@mp.pipeline(name="données")
def unicode_names(x: int = 1) -> int:
    return one.with_options(name="étape_数据")(x)


@mp.pipeline(name="数据")
def bad_pipeline_name(x: int = 1) -> int:
    return one(x)


@mp.step
def size(text: str) -> int:
    return len(text)


@mp.pipeline(name="big-default")
def big_default(blob: str = "x" * 20_000) -> int:
    return size(blob)


@mp.pipeline(name="reserved")
def reserved(mlpipe_run_id: str = "x") -> int:
    return size(mlpipe_run_id)


@mp.step(env={"BAD NAME": "1"})
def bad_env(x: int) -> int:
    return x


@mp.pipeline(name="bad-env")
def bad_env_pipeline(x: int = 1) -> int:
    return bad_env(x)


@mp.step(resources=mp.Resources(cpu=0.0005))
def tiny_cpu(x: int) -> int:
    return x


@mp.pipeline(name="tiny-cpu")
def tiny_cpu_pipeline(x: int = 1) -> int:
    return tiny_cpu(x)


@mp.step(resources=mp.Resources(gpu=1, accelerator="nvidia-tesla-t4"))
def gpu_step(x: int) -> int:
    return x


@mp.pipeline(name="gpu")
def gpu_pipeline(x: int = 1) -> int:
    return gpu_step(x)


@mp.step
def needs(x: int) -> int:
    if x < 0:
        raise ValueError("negative")
    return x * 2


@mp.pipeline(name="kfp-small")
def small(x: int = 2, scale: list[float] = [1, 2]) -> int:
    return needs(needs(x))


@mp.step(resources=mp.Resources(memory="300Mi", cpu=0.25))
def mix(n: int, rate: float, name: str, on: bool, items: list[int], cfg: dict[str, Any], tail: str) -> str:
    return f"{name}{n}{rate}{on}{items}{cfg}{tail}"


@mp.pipeline(name="Required_Params")
def required_params(n: int, rate: float, name: str, on: bool, items: list[int], cfg: dict[str, Any],
                    tail: str = "it's \"quoted\"\nand long " * 5) -> str:
    return mix(n, rate, name, on, items, cfg, tail)


@mp.step
def score(x: int) -> float:
    return x / 10


@mp.step
def is_even(x: int) -> bool:
    return x % 2 == 0


@mp.step
def label(value: float, tag: str) -> str:
    return f"{tag}:{value}"


@mp.pipeline(name="kfp-branches")
def branches(x: int = 9, tag: str = "t") -> None:
    """Conditions as sub-DAGs: an if/else pair, a block nested in a block, a test made twice, a parameter inside."""
    s = score(x)
    with mp.when(s > 0.5):
        high = label(s, tag)
        even = is_even(x)
        with mp.when(even) as is_so:
            label(s, "even")
        with mp.when(~is_so):
            size(high)
    with mp.when(~(s > 0.5)):
        label(s, tag)
    with mp.when(s >= 0.8):  # a second test on the same output: a second published result
        one(x)


@mp.step
def grid(n: int) -> list[float]:
    return [i / 4 for i in range(n)]


@mp.step
def fit_one(lr: float, epochs: int) -> float:
    return round(lr * epochs, 3)


@mp.step
def best(scores: list[float]) -> float:
    return max(scores)


@mp.pipeline(name="kfp-fan")
def fan(n: int = 3, epochs: int = 4) -> float:
    """A map over a step's run-time list, a map over the mapped result, a fan-in, and a map under a condition."""
    scores = fit_one.map(lr=grid(n), epochs=mp.unmapped(epochs))
    top = best(fit_one.map(lr=scores, epochs=mp.unmapped(2)))
    with mp.when(top > 1.0):
        label.map(value=scores, tag=mp.unmapped("hi"))
    return top


@mp.step
def total(values: list[int]) -> int:
    return sum(values)


@mp.pipeline(name="kfp-fragile")
def fragile(xs: list[int] = [1, 2]) -> int:
    return total(needs.map(x=xs))


@mp.pipeline(name="kfp-zip")
def zipped(n: int = 2, epochs: list[int] = [1, 2]) -> float:
    return best(fit_one.map(lr=grid(n), epochs=epochs))
