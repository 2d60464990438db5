"""Small pipelines for the Vertex backend's tests: per-step machine resources, and what Vertex refuses."""

from __future__ import annotations

import mlpipe as mp


@mp.step(resources=mp.Resources(cpu=8, memory="32Gi"), retries=2, timeout=600)
def prepare(n: int) -> list[float]:
    return [float(i) for i in range(n)]


@mp.step(resources=mp.Resources(cpu=4, memory="16G", gpu=2, accelerator="nvidia-l4"), env={"TF_CPP": "1"})
def fit(rows: list[float], lr: float = 0.1) -> float:
    return sum(rows) * lr


@mp.step(resources=mp.Resources(gpu=1))
def score(model: float) -> float:
    return model


@mp.step(cache=False)
def report(score: float, label: str = "score") -> str:
    return f"{label}={score}"


@mp.pipeline(name="GPU_Training-v2")
def machines(n: int = 3, lr: float = 0.5, label: str = "score") -> str:
    return report(score(fit(prepare(n), lr=lr)), label=label)


@mp.step
def one(x: int) -> int:
    return x


def _with(resources: mp.Resources, name: str = "big") -> mp.Pipeline:
    step = one.with_options(name=name, resources=resources)

    @mp.pipeline(name=f"refuse-{name}")
    def pipe(x: int = 1) -> int:
        return step(x)

    return pipe


too_many_cpus = _with(mp.Resources(cpu=128))
too_much_memory = _with(mp.Resources(memory="1Ti"))
too_many_gpus = _with(mp.Resources(gpu=9, accelerator="NVIDIA_L4"))
unknown_accelerator = _with(mp.Resources(gpu=1, accelerator="nvidia-gtx-1080"))
instance_type = _with(mp.Resources(cpu=2, instance_type="n1-standard-8"))
a100_x16 = _with(mp.Resources(gpu=16, accelerator="nvidia-tesla-a100"), name="ok")


@mp.pipeline(name="_2Stage_Training-" + "X" * 100)
def awkward_name(x: int = 1) -> int:
    return one(x)
