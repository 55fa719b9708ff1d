"""How many tokenizer actors, and what each asks Ray for: the plan is a pure function of the runtime's
declaration (runtimes: whether it runs on a GPU with these options, how its threads are set), its
options and the cluster's nodes, so it is tested without a GPU.

CPU backends: two actors per node by default (one on a 1-CPU node), sharing the node's cores as
runtime threads: while one actor takes its next batch or hands back tokens, the other computes
(measured 1.13-1.18x one actor with all the cores on 2 cores; docs/tokenize.md, "Throughput").
Ray's CPU accounting keeps READ_RESERVE_CPUS per node free for decoding, reading and writing tasks
(each asks for TASK_CPUS), so the tokenizer never waits for input and input never waits for a CPU
slot held by an idle actor.
GPU backends: one actor per GPU, each asking Ray for one GPU (Ray sets CUDA_VISIBLE_DEVICES, so the
actor's device is always its device 0) and one CPU to feed it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from gsq_core.errors import InputError

if TYPE_CHECKING:
    from gsq_deploy.runtimes import TokenizerRuntime

READ_RESERVE_CPUS = 0.5  # per node, kept for the read/decode/write tasks
TASK_CPUS = 0.25  # Ray CPUs each read/decode/write task asks for
MIN_ACTOR_CPUS = 0.25
ACTORS_PER_CPU_NODE = 2  # default tokenizer actors per CPU node (fewer where the node has fewer CPUs)


@dataclass(frozen=True)
class NodeResources:
    """One alive Ray node's logical resources."""

    cpus: float
    gpus: float = 0.0


@dataclass(frozen=True)
class WorkerPlan:
    """What the tokenizer actor pool is configured with."""

    workers: int  # tokenizer actors
    cpus_per_worker: float  # Ray num_cpus of each actor
    gpus_per_worker: float  # Ray num_gpus of each actor (0 or 1)
    threads: int | None  # runtime threads per actor (None: the backend's own choice, GPU backends)
    task_cpus: float  # Ray num_cpus of each read / decode / write task

    def describe(self) -> dict[str, Any]:
        return asdict(self)


def plan_workers(
    runtime: type[TokenizerRuntime],
    options: Mapping[str, Any],
    nodes: list[NodeResources],
    workers: int | None = None,
    threads: int | None = None,
) -> WorkerPlan:
    """The actor pool for this cluster (`runtime`: the backend's runtime class, whose runs_on_gpu(options)
    decides GPU or CPU actors); InputError when the cluster cannot host it."""
    if workers is not None and workers < 1:
        raise InputError(f"--workers {workers} must be >= 1")
    if runtime.runs_on_gpu(options):
        total_gpus = int(sum(node.gpus for node in nodes))
        if total_gpus == 0:
            raise InputError(
                f"the {runtime.backend} backend with these options runs on a GPU, and the Ray cluster has none "
                "(start GPU nodes, or choose a CPU device)"
            )
        count = workers or total_gpus
        if count > total_gpus:
            raise InputError(f"--workers {count} needs {count} GPUs (one per worker); the Ray cluster has {total_gpus}")
        return WorkerPlan(count, 1.0, 1.0, threads, TASK_CPUS)
    cpu_nodes = [node for node in nodes if node.cpus > 0]
    if not cpu_nodes:
        raise InputError("the Ray cluster has no CPUs")
    total_cpus = sum(node.cpus for node in cpu_nodes)
    count = workers or sum(min(ACTORS_PER_CPU_NODE, max(1, int(node.cpus))) for node in cpu_nodes)
    budget = total_cpus - READ_RESERVE_CPUS * len(cpu_nodes)
    cpus_per_worker = max(MIN_ACTOR_CPUS, budget / count)
    if count > 1 and cpus_per_worker > min(node.cpus for node in cpu_nodes) - READ_RESERVE_CPUS:
        cpus_per_worker = max(MIN_ACTOR_CPUS, min(node.cpus for node in cpu_nodes) - READ_RESERVE_CPUS)
    if threads is None:
        threads = max(1, round(total_cpus / count))
    return WorkerPlan(count, round(cpus_per_worker, 2), 0.0, threads, TASK_CPUS)


def runtime_options(
    runtime: type[TokenizerRuntime], options: Mapping[str, Any], plan: WorkerPlan
) -> tuple[dict[str, Any], int | None]:
    """(options for load_runtime in each actor, torch intra-op threads) with the plan's threads filled
    in where the runtime declares how it takes them: a `threads` option, or torch's threads of the
    process (CPU actors only)."""
    options = {key: value for key, value in options.items() if value is not None}
    if runtime.torch_threads:
        return options, plan.threads if plan.gpus_per_worker == 0 else None
    if "threads" in runtime.options and plan.threads is not None:
        options.setdefault("threads", plan.threads)
    return options, None
