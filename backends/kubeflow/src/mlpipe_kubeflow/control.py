"""``mp.when`` blocks as KFP condition sub-DAGs: which tasks go in which, their names and order.

Each distinct ``mp.when`` block becomes what ``dsl.If`` compiles to: a task
``condition-N`` in the enclosing DAG whose component is a sub-DAG holding the
block's tasks, started only when ``triggerPolicy.condition`` holds. The
condition reads a BOOLEAN output parameter of the task whose output is tested
(``mlpipe_when_<k>``): ``python -m mlpipe.runtime`` writes it with the same
test the local backend applies (:meth:`mlpipe.ir.ConditionSpec.holds`), so a
branch is taken on Kubeflow exactly when it is taken locally; ``~c`` reads
the same output as ``== false``. Nested blocks are nested sub-DAGs.

Groups are numbered ``condition-1``, ``condition-2``... in the order kfp's
DSL would number them when the pipeline is built unit by unit (a task or a
whole block, in dependency order, ties by first step), which is how
:func:`mlpipe_kubeflow.compiler.build` builds it; the tests compare the two.
"""

from __future__ import annotations

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
_ROOT = ""


@dataclass(frozen=True)
class GroupPlan:
    """One ``mp.when`` block as a condition sub-DAG (``dsl.If``)."""

    name: str  # condition-N: its task in the parent DAG, and comp-condition-N
    parent: str  # the enclosing group's name, "" for the root DAG
    producer: str  # the task that publishes the test
    output: str  # its BOOLEAN output parameter
    expected: bool  # the published result that takes this branch (False for ~c)
    condition: str  # the condition as mlpipe describes it

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

    def group(self, name: str) -> GroupPlan:
        return next(g for g in self.groups if g.name == name)

    def chain(self, dag: str) -> list[str]:
        """``dag`` and the groups enclosing it, innermost first (empty for the root)."""
        out: list[str] = []
        while dag:
            out.append(dag)
            dag = self.group(dag).parent
        return out


def plan_layout(ir: PipelineIR, names: Mapping[str, str]) -> Layout:
    """Group the tasks of ``ir`` (step → task ``names``) into condition sub-DAGs.

    Raises:
        UnsupportedFeatureError: a step depends on a step of a branch it is not in, or a group's name is taken.
    """
    if not any(s.when for s in ir.steps):
        return Layout()
    published = ir.published_tests()
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

    def walk(dag: str) -> None:
        for member in ordered[dag]:
            if member in units:
                rename[member] = f"condition-{len(groups) + 1}"
                condition = conditions[member][-1]
                producer = names[condition.step]
                k = published[condition.step].index(condition.test())
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
    taken = sorted({g.name for g in groups} & set(names.values()))
    if taken:
        step = next(s for s, t in names.items() if t == taken[0])
        raise UnsupportedFeatureError(
            f"step {step!r}: its KFP task name {taken[0]!r} is the name of a condition sub-DAG of this pipeline; "
            "rename the step",
            backend=BACKEND,
            step=step,
        )
    return Layout(
        groups=tuple(groups),
        members=tuple((rename[dag], tuple(rename.get(m, m) for m in ordered[dag])) for dag in units),
        task_group=tuple((task, rename[dag]) for task, dag in task_dag.items()),
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
    """The sub-DAG components (``comp-condition-N``, their tasks still empty) and each DAG's group tasks.

    The dicts are what kfp's compiler writes for ``dsl.If`` blocks: a group's
    inputs are the pipeline parameters its tasks use and the condition
    outputs of the groups around its tasks whose producer is outside it.
    """
    dag_of = {t.name: t.dag for t in tasks}
    components: dict[str, Any] = {}
    group_tasks: dict[str, dict[str, Any]] = {}
    for group in layout.groups:
        inside = [t for t in tasks if group.name in layout.chain(t.dag)]
        names = {t.name for t in inside}
        params: list[str] = []
        channels: dict[str, GroupPlan] = {}
        for t in inside:
            params += [p for p in t.params if p not in params]
            for enclosing in layout.chain(t.dag):
                around = layout.group(enclosing)
                if around.producer not in names:
                    channels.setdefault(around.channel, around)
        inputs: dict[str, Any] = {outer_input(p): {"parameterType": param_types[p]} for p in params}
        inputs.update({name: {"parameterType": "BOOLEAN"} for name in channels})
        components[f"comp-{group.name}"] = {"dag": {"tasks": {}}, "inputDefinitions": {"parameters": inputs}}
        parent = group.parent
        arguments: dict[str, Any] = {
            outer_input(p): {"componentInputParameter": outer_input(p) if parent else p} for p in params
        }
        for name, around in channels.items():
            if dag_of[around.producer] == parent:
                arguments[name] = {
                    "taskOutputParameter": {"outputParameterKey": around.output, "producerTask": around.producer}
                }
            else:
                arguments[name] = {"componentInputParameter": name}
        after = {a for t in inside for a in t.after if dag_of[a] == parent}
        if dag_of[group.producer] == parent:
            after.add(group.producer)
        spec: dict[str, Any] = {"componentRef": {"name": f"comp-{group.name}"}}
        if after:
            spec["dependentTasks"] = sorted(after)
        spec.update(
            inputs={"parameters": arguments},
            taskInfo={"name": group.name},
            triggerPolicy={"condition": group.trigger},
        )
        group_tasks.setdefault(parent, {})[group.name] = spec
    return components, group_tasks
