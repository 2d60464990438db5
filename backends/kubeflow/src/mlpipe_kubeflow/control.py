"""``mp.when`` blocks and ``step.map`` as KFP sub-DAGs: which tasks go in which, their names and order.

Each distinct ``mp.when`` block becomes what ``dsl.If`` compiles to: a task
``condition-N`` in the enclosing DAG whose component is a sub-DAG holding the
block's tasks, started only when ``triggerPolicy.condition`` holds. The
condition reads a BOOLEAN output parameter of the task whose output is tested
(``mlpipe_when_<k>``): ``python -m mlpipe.runtime`` writes it with the same
test the local backend applies (:meth:`mlpipe.ir.ConditionSpec.holds`), so a
branch is taken on Kubeflow exactly when it is taken locally; ``~c`` reads
the same output as ``== false``. Nested blocks are nested sub-DAGs.

A mapped step ``train`` becomes three tasks: ``train-items`` works out the
items (``mlpipe.mapping.item_specs``: lengths, values) and publishes their
indices as a LIST output ``mlpipe_items``; a ``dsl.ParallelFor`` over that
list (``for-loop-N``, ``iteratorPolicy.parallelismLimit``) runs
``train-item`` once per index, which records ``train[i]`` with its own cache
key; and ``train`` takes the iterations' records as ``dsl.Collected`` and
records the step with the list of its items' outputs (the fan-in).

Groups are numbered ``condition-1``, ``for-loop-2``... in the order kfp's
DSL would number them when the pipeline is built unit by unit (a task or a
whole block, in dependency order, ties by first step), which is how
:func:`mlpipe_kubeflow.compiler.build` builds it; the tests compare the two.
"""

from __future__ import annotations

import functools
import heapq
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mlpipe.errors import UnsupportedFeatureError
from mlpipe.ir import ConditionSpec, PipelineIR
from mlpipe_kubeflow.naming import BACKEND

__all__ = [
    "WHEN_OUTPUT",
    "GroupPlan",
    "Layout",
    "TaskWiring",
    "channel",
    "group_documents",
    "outer_input",
    "plan_layout",
]

WHEN_OUTPUT = "mlpipe_when_{}"
ITEMS_OUTPUT = "mlpipe_items"  # the fan-out task's LIST of item indices
ITEM_INPUT = "mlpipe_item"  # an iteration's index
RECORDS_INPUT = "mlpipe_records"  # the fan-in task's dsl.Collected iteration records
_ROOT = ""


@dataclass(frozen=True)
class GroupPlan:
    """One ``mp.when`` block as a condition sub-DAG (``dsl.If``), or a mapped step's loop (``dsl.ParallelFor``)."""

    name: str  # condition-N / for-loop-N: its task in the parent DAG, and comp-<name>
    parent: str  # the enclosing group's name, "" for the root DAG
    producer: str  # the task that publishes the test (the item indices, for a loop)
    output: str  # its BOOLEAN output parameter (LIST, for a loop)
    expected: bool = True  # the published result that takes this branch (False for ~c)
    condition: str = ""  # the condition as mlpipe describes it
    kind: str = "condition"  # or "loop"
    parallelism: int = 0  # a loop's parallelismLimit

    @property
    def loop(self) -> bool:
        return self.kind == "loop"

    @property
    def channel(self) -> str:
        return channel(self.producer, self.output)

    @property
    def trigger(self) -> str:
        """The CEL expression kfp writes for ``dsl.If(task.outputs[output] == expected)``."""
        return f"inputs.parameter_values['{self.channel}'] == {'true' if self.expected else 'false'}"


def channel(producer: str, output: str) -> str:
    """kfp's name for a task output passed into a sub-DAG."""
    return f"pipelinechannel--{producer}-{output}"


@dataclass(frozen=True)
class Layout:
    """Where every task and group sits: each DAG's members, in the order they are built."""

    groups: tuple[GroupPlan, ...] = ()
    members: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (DAG: "" or a group name, its tasks and groups)
    task_group: tuple[tuple[str, str], ...] = ()  # task name -> its innermost group ("" at the root)
    tests: tuple[tuple[str, int], ...] = ()  # task name -> how many mlpipe_when outputs it publishes

    @functools.cached_property
    def _groups(self) -> dict[str, GroupPlan]:
        return {g.name: g for g in self.groups}

    @functools.cached_property
    def _dags(self) -> dict[str, str]:
        return dict(self.task_group)

    def group(self, name: str) -> GroupPlan:
        return self._groups[name]

    def dag_of(self, task: str) -> str:
        """The DAG a task sits in ("" for the root)."""
        return self._dags.get(task, "")

    def member_in(self, dag: str, task: str) -> str | None:
        """The member of ``dag`` that holds ``task``: the task, or the group around it; None when outside ``dag``."""
        inner = self.dag_of(task)
        if inner == dag:
            return task
        while inner and self._groups[inner].parent != dag:
            inner = self._groups[inner].parent
        return inner or None

    def chain(self, dag: str) -> list[str]:
        """``dag`` and the groups enclosing it, innermost first (empty for the root)."""
        out: list[str] = []
        while dag:
            out.append(dag)
            dag = self.group(dag).parent
        return out


def plan_layout(ir: PipelineIR, names: Mapping[str, str], parallelism: Mapping[str, int]) -> Layout:
    """Group the tasks of ``ir`` (step → task ``names``) into condition sub-DAGs and loops.

    ``parallelism`` is each mapped step's ``parallelismLimit``, by step name.

    Raises:
        UnsupportedFeatureError: a step depends on a step of a branch it is not in, or a group's name is taken.
    """
    if not any(s.when or s.map_over for s in ir.steps):
        return Layout()
    published = ir.published_tests()
    test_index = {step: {test: k for k, test in enumerate(tests)} for step, tests in published.items()}
    when = {s.name: s.when for s in ir.steps}
    keys: dict[tuple[ConditionSpec, ...], str] = {}  # block (its conditions) -> a provisional id
    first: dict[str, int] = {}  # unit id -> first step index, for a stable order
    parent_of: dict[str, str] = {}
    units: dict[str, list[str]] = {_ROOT: []}  # DAG id -> members (task names and block ids)

    def block(conditions: tuple[ConditionSpec, ...], index: int) -> str:
        if not conditions:
            return _ROOT
        found = keys.get(conditions)
        if found is None:
            found = keys[conditions] = f"\0{len(keys)}"
            parent = block(conditions[:-1], index)
            parent_of[found] = parent
            units[found] = []
            units[parent].append(found)
            first[found] = index
        return found

    for index, spec in enumerate(ir.steps):
        task = names[spec.name]
        first[task] = index
        for i, condition in enumerate(spec.when):
            producer = when[condition.step]
            if producer != spec.when[: len(producer)] or len(producer) > i:
                raise _outside(spec.name, condition.step, producer, f"its condition {condition.describe()}")
        for up in spec.upstream:
            if when[up] != spec.when[: len(when[up])]:
                raise _outside(spec.name, up, when[up], "its input")
        units[block(spec.when, index)].append(task)
    task_dag = {names[s.name]: keys.get(s.when, _ROOT) for s in ir.steps}
    inside: dict[str, set[str]] = {}  # block id -> every task in it, nested ones included
    for task, dag in task_dag.items():
        while dag:
            inside.setdefault(dag, set()).add(task)
            dag = parent_of[dag]

    def unit_at(dag: str, task: str) -> str | None:
        """The member of ``dag`` that holds ``task`` (itself, or a block around it); None when outside."""
        member = task_dag[task]
        if member == dag:
            return task
        while member and parent_of[member] != dag:
            member = parent_of[member]
        return member if member else None

    after = {names[s.name]: [names[u] for u in s.upstream] for s in ir.steps}
    ordered: dict[str, list[str]] = {}
    for dag, members in units.items():
        deps: dict[str, set[str]] = {m: set() for m in members}
        for member in members:
            for task in inside.get(member, {member}):
                for up in after[task]:
                    target = unit_at(dag, up)
                    if target is not None and target != member:
                        deps[member].add(target)
        ordered[dag] = _stable_topological(members, deps, first)
    groups: list[GroupPlan] = []
    rename: dict[str, str] = {_ROOT: _ROOT}
    conditions = {key: conds for conds, key in keys.items()}
    mapped = {names[s.name]: s.name for s in ir.steps if s.map_over}
    members_out: dict[str, list[str]] = {}
    placed: dict[str, str] = {}  # every task (a mapped step's three included) -> its DAG

    def walk(dag: str) -> None:
        here = rename[dag]
        out = members_out.setdefault(here, [])
        for member in ordered[dag]:
            if member in mapped:
                loop = f"for-loop-{len(groups) + 1}"
                fan_out, item = f"{member}-items", f"{member}-item"
                groups.append(
                    GroupPlan(
                        name=loop,
                        parent=here,
                        producer=fan_out,
                        output=ITEMS_OUTPUT,
                        kind="loop",
                        parallelism=parallelism[mapped[member]],
                    )
                )
                out += [fan_out, loop, member]
                members_out[loop] = [item]
                placed.update({fan_out: here, member: here, item: loop})
                continue
            if member not in units:
                out.append(member)
                placed[member] = here
                continue
            rename[member] = f"condition-{len(groups) + 1}"
            out.append(rename[member])
            condition = conditions[member][-1]
            producer = names[condition.step]
            k = test_index[condition.step][condition.test()]
            groups.append(
                GroupPlan(
                    name=rename[member],
                    parent=rename[parent_of[member]],
                    producer=producer,
                    output=WHEN_OUTPUT.format(k),
                    expected=not condition.negate,
                    condition=condition.describe(),
                )
            )
            walk(member)

    walk(_ROOT)
    steps = {t: s for s, t in names.items()}
    extra = {f"{t}{suffix}": steps[t] for t in mapped for suffix in ("-items", "-item")}
    taken = sorted(({g.name for g in groups} | set(extra)) & set(names.values()))
    if taken:
        step = steps[taken[0]]
        raise UnsupportedFeatureError(
            f"step {step!r}: its KFP task name {taken[0]!r} is also the name of a condition sub-DAG, a loop or a "
            "mapped step's fan-out task of this pipeline; rename the step",
            backend=BACKEND,
            step=step,
        )
    return Layout(
        groups=tuple(groups),
        members=tuple((dag, tuple(members)) for dag, members in members_out.items()),
        task_group=tuple(placed.items()),
        tests=tuple((names[step], len(tests)) for step, tests in published.items()),
    )


def _outside(step: str, other: str, blocks: tuple[ConditionSpec, ...], what: str) -> UnsupportedFeatureError:
    where = " and ".join(c.describe() for c in blocks) or "always"
    return UnsupportedFeatureError(
        f"step {step!r}: {what} comes from step {other!r}, which runs only when {where}, and {step!r} is not inside "
        f"that `with mp.when(...)` block; KFP cannot wire a task to one inside a condition it is not in. Move "
        f"{step!r} into the block",
        backend=BACKEND,
        step=step,
    )


def _stable_topological(members: list[str], deps: Mapping[str, set[str]], first: Mapping[str, int]) -> list[str]:
    """``members`` in dependency order, the earliest first step first among those ready."""
    waiting = {m: len(deps[m]) for m in members}
    users: dict[str, list[str]] = {m: [] for m in members}
    for member, needs in deps.items():
        for need in needs:
            users[need].append(member)
    ready = [(first[m], m) for m in members if not waiting[m]]
    heapq.heapify(ready)
    out: list[str] = []
    while ready:
        _, member = heapq.heappop(ready)
        out.append(member)
        for user in users[member]:
            waiting[user] -= 1
            if not waiting[user]:
                heapq.heappush(ready, (first[user], user))
    return out


@dataclass(frozen=True)
class TaskWiring:
    """What :func:`group_documents` needs to know of a task."""

    name: str
    dag: str
    params: tuple[str, ...]
    after: tuple[str, ...]


def outer_input(name: str) -> str:
    """The name of a pipeline parameter inside a sub-DAG (kfp passes it down as a channel)."""
    return f"pipelinechannel--{name}"


def group_documents(
    layout: Layout, tasks: list[TaskWiring], param_types: Mapping[str, str]
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The sub-DAG components (``comp-condition-N``, ``comp-for-loop-N``; their tasks still empty) and each
    DAG's group tasks.

    The dicts are what kfp's compiler writes for ``dsl.If`` and ``dsl.ParallelFor``
    blocks: a group's inputs are the pipeline parameters its tasks use, the
    condition outputs of the conditions around its tasks whose producer is
    outside it, and, for a loop, the list it iterates over and the item.
    """
    components: dict[str, Any] = {}
    group_tasks: dict[str, dict[str, Any]] = {}
    chains = {t.name: layout.chain(t.dag) for t in tasks}
    within: dict[str, list[TaskWiring]] = {}  # group -> the tasks inside it, nested ones included
    for t in tasks:
        for enclosing in chains[t.name]:
            within.setdefault(enclosing, []).append(t)
    for group in layout.groups:
        inside = within.get(group.name, [])
        names = {t.name for t in inside}
        params: list[str] = []
        channels: dict[str, GroupPlan] = {}
        for t in inside:
            params += [p for p in t.params if p not in params]
            for enclosing in chains[t.name]:
                around = layout.group(enclosing)
                if not around.loop and around.producer not in names:
                    channels.setdefault(around.channel, around)
        inputs: dict[str, Any] = {outer_input(p): {"parameterType": param_types[p]} for p in params}
        inputs.update({name: {"parameterType": "BOOLEAN"} for name in channels})
        parent = group.parent
        arguments: dict[str, Any] = {
            outer_input(p): {"componentInputParameter": outer_input(p) if parent else p} for p in params
        }
        for name, around in channels.items():
            arguments[name] = _argument(layout, parent, name, around.producer, around.output)
        component: dict[str, Any] = {"dag": {"tasks": {}}, "inputDefinitions": {"parameters": inputs}}
        if group.loop:
            item = next(iter(names))
            record = channel(item, "mlpipe_record")
            inputs[group.channel] = {"parameterType": "LIST"}
            inputs[f"{group.channel}-loop-item"] = {"parameterType": "NUMBER_INTEGER"}
            arguments[group.channel] = _argument(layout, parent, group.channel, group.producer, group.output)
            component["dag"]["outputs"] = {
                "parameters": {
                    record: {"valueFromParameter": {"outputParameterKey": "mlpipe_record", "producerSubtask": item}}
                }
            }
            component["outputDefinitions"] = {"parameters": {record: {"parameterType": "LIST"}}}
        components[f"comp-{group.name}"] = component
        after = {layout.member_in(parent, a) for t in inside for a in t.after if a not in names}
        if layout.member_in(parent, group.producer) is not None:
            after.add(group.producer)
        after.discard(None)
        spec: dict[str, Any] = {"componentRef": {"name": f"comp-{group.name}"}}
        if after:
            spec["dependentTasks"] = sorted(a for a in after if a is not None)
        spec["inputs"] = {"parameters": arguments}
        if group.loop:
            if group.parallelism:
                spec["iteratorPolicy"] = {"parallelismLimit": group.parallelism}
            spec["parameterIterator"] = {
                "itemInput": f"{group.channel}-loop-item",
                "items": {"inputParameter": group.channel},
            }
            spec["taskInfo"] = {"name": group.name}
        else:
            spec["taskInfo"] = {"name": group.name}
            spec["triggerPolicy"] = {"condition": group.trigger}
        group_tasks.setdefault(parent, {})[group.name] = spec
    return components, group_tasks


def _argument(layout: Layout, dag: str, name: str, producer: str, output: str) -> dict[str, Any]:
    """How a group task in ``dag`` receives a task output: from the task itself when it is in ``dag``."""
    if layout.dag_of(producer) == dag:
        return {"taskOutputParameter": {"outputParameterKey": output, "producerTask": producer}}
    return {"componentInputParameter": name}
