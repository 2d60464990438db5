"""Fan-out and conditions at run time, the same on every backend that runs them.

A mapped step (``step.map``) becomes one item spec per element, ``<name>[i]``,
each cached by its own key; its output is the list of its items' outputs,
stored once per distinct list of items. A step under ``mp.when`` is skipped,
branch not taken, when its condition is false. The local backend and the Dask
workers both build items, collect them and decide conditions through these
functions, so a run on one is a cache hit on the other, item by item.

What reads the values (this process's memory, or the store) is the caller's:
every function here takes a ``value_of(step, output)`` callable.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from mlpipe.cache import lookup, write_entry
from mlpipe.hashing import digest_json, json_safe
from mlpipe.ir import InputSpec, StepSpec
from mlpipe.store import ArtifactStore, ObjectInfo

__all__ = ["ValueOf", "branch_not_taken", "collect_items", "item_specs", "items_failed"]

#: Reads the value of one output of an upstream step: ``value_of(step, output)``.
ValueOf = Callable[[str, str], Any]


def branch_not_taken(spec: StepSpec, value_of: ValueOf) -> str | None:
    """Why the step is skipped (its first ``mp.when`` condition that is false), or None when it runs."""
    for condition in spec.when:
        if not condition.holds(value_of(condition.step, condition.output)):
            return f"skipped: branch not taken (condition {condition.describe()} is false)"
    return None


def item_specs(
    spec: StepSpec,
    specs: Mapping[str, StepSpec],
    params: Mapping[str, Any],
    value_of: ValueOf,
    items: Mapping[str, Sequence[str]],
) -> list[StepSpec] | str:
    """One spec per item of the mapped step ``spec`` (``name[i]``), or the reason there cannot be.

    ``items`` names the items of each mapped upstream step, in order (item i
    of a mapped producer is its own stored object, read by item i here).
    """
    lists: dict[str, list[Any]] = {}
    producers: set[str] = set()
    for inp in spec.inputs:
        if inp.name not in spec.map_over:
            continue
        if inp.source == "param":
            lists[inp.name] = list(params[inp.param or ""])
        elif inp.source == "const":
            lists[inp.name] = list(inp.value)
        elif specs[inp.step or ""].map_over:
            lists[inp.name] = list(items[inp.step or ""])
            producers.add(inp.name)
        else:
            lists[inp.name] = list(value_of(inp.step or "", inp.output or ""))
    lengths = {arg: len(values) for arg, values in lists.items()}
    if len(set(lengths.values())) > 1:
        sizes = ", ".join(f"{arg}: {n}" for arg, n in lengths.items())
        return f"mismatched map lengths ({sizes}); mapped lists are zipped, so they need one length"
    count = next(iter(lengths.values()))
    out: list[StepSpec] = []
    for i in range(count):
        inputs: list[InputSpec] = []
        upstream = [u for u in spec.upstream if not specs[u].map_over]
        for inp in spec.inputs:
            if inp.name in producers:
                item_step = lists[inp.name][i]
                inputs.append(inp.model_copy(update={"step": item_step}))
                upstream.append(item_step)
            elif inp.name in lists:
                value = lists[inp.name][i]
                if not json_safe(value):
                    return (
                        f"item {i} of the mapped argument {inp.name!r} is not a JSON value "
                        f"({type(value).__name__}); map over a step's mapped output instead"
                    )
                inputs.append(inp.model_copy(update={"source": "const", "value": value, "param": None}))
            else:
                inputs.append(inp)
        update = {"name": f"{spec.name}[{i}]", "inputs": tuple(inputs), "map_over": (), "upstream": tuple(upstream)}
        out.append(spec.model_copy(update=update))
    return out


def items_failed(failed: Sequence[tuple[str, str | None]], total: int) -> str:
    """The mapped step's error when some of its items failed: how many, and the first one's error."""
    name, error = failed[0]
    return f"{len(failed)} of {total} items failed; {name}: {error}"


def collect_items(
    store: ArtifactStore,
    pipeline: str,
    spec: StepSpec,
    run_id: str,
    outputs: Sequence[ObjectInfo],
    read: Callable[[ObjectInfo], Any],
) -> ObjectInfo:
    """The mapped step's output: the list of its items' ``outputs``, stored once per distinct list.

    ``read`` loads one item's value; it is called only when this list of
    items was never collected before (a re-run reuses the stored list).
    """
    key = digest_json(["mlpipe.map", spec.name, [info.digest for info in outputs]])
    entry = lookup(store, key)
    if entry is not None:
        return ObjectInfo(**entry.outputs["output"])
    collected = store.put_value([read(info) for info in outputs])
    write_entry(store, key, pipeline, spec.name, run_id, {"output": collected.to_dict()}, {})
    return collected
