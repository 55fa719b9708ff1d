"""One gsq-tokenize run: check everything on the driver, then read -> decode -> tokenize -> write in
this process (gsq_dataset.local) or on Ray Data (choose_executor), commit the shards, and record the
run in the manifest."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gsq_core.errors import GSQError, InputError
from gsq_deploy.runtimes import runtime_class

from . import preprocess
from .inputs import InputSet, find_inputs
from .formats import check_format
from .formats import describe as describe_format
from .local import LocalPlan
from .output import MANIFEST_FORMAT, MANIFEST_VERSION, CommitResult, OutputError, OutputFolder
from .resources import NodeResources, WorkerPlan, plan_workers, runtime_options

ROWS_PER_SHARD = 4096
EXECUTORS = ("auto", "local", "ray")


@dataclass
class TokenizeConfig:
    """Everything a run is asked to do (the CLI's options)."""

    model: str
    inputs: list[str]
    output: Path
    backend: str = "torch"
    size: int | str = 256
    batch_size: int = 32
    workers: int | None = None
    threads: int | None = None
    ray_address: str | None = None
    num_cpus: int | None = None
    overwrite: bool = False
    input_format: str = "auto"
    backend_options: dict[str, Any] = field(default_factory=dict)
    rows_per_shard: int = ROWS_PER_SHARD
    connect_timeout_s: float = 30.0
    progress: bool = True
    executor: str = "auto"  # auto | local | ray (see choose_executor)
    output_format: str = "ours"  # ours | flexgen | jsonl (gsq_dataset.formats)
    decoders: int | None = None  # decode + crop threads of the local executor


@dataclass
class RunSummary:
    """What a run did, and what DST holds afterwards."""

    output: Path
    tokenized: int  # this run
    failed: int  # this run
    skipped: int  # finished before this run
    seconds: float  # the whole run, Ray start-up included
    totals: dict[str, int]
    commit: CommitResult
    plan: WorkerPlan | LocalPlan | None
    steady_rate: float | None = None  # img/s from the first tokenized batch to the last
    executor: str = "local"
    executor_reason: str = ""
    stages: dict[str, Any] | None = None  # per-stage seconds per image and the bound (StageClock.report)
    startup_seconds: float | None = None  # from the command's start to the first tokenized batch
    shutdown_seconds: float | None = None  # from the last tokenized batch to the end of the run

    def lines(self) -> list[str]:
        rate = self.tokenized / self.seconds if self.seconds > 0 else 0.0
        steady = f", {self.steady_rate:.1f} img/s after start-up" if self.steady_rate else ""
        lines = [
            f"tokenized {self.tokenized} images this run ({rate:.1f} img/s overall{steady}), {self.failed} failed, "
            f"{self.skipped} already done",
            f"executor: {self.executor} ({self.executor_reason})",
        ]
        if self.stages and self.stages.get("bound"):
            per_image = ", ".join(
                f"{stage} {value * 1000:.1f} ms" for stage, value in self.stages["seconds_per_image"].items() if value is not None
            )
            fixed = ""
            if self.startup_seconds is not None and self.shutdown_seconds is not None:
                fixed = f"; start-up {self.startup_seconds:.1f} s, shut-down {self.shutdown_seconds:.1f} s"
            lines.append(
                f"stages per image: {per_image}; bound: {self.stages['bound']} "
                f"({self.stages['bound_images_per_s']:.1f} img/s){fixed}"
            )
        lines.append(
            f"{self.output}: {self.totals['tokenized']} token rows in {self.totals['shards']} files, "
            f"{self.totals['failed']} failed samples listed in {self.output / '_failed.jsonl'}"
        )
        return lines


# -- the model ---------------------------------------------------------------------------------------
MODEL_FACTS = (
    "backend", "model", "model_sha256", "precision", "num_embed", "num_group", "downsample_factor", "token_layout",
    "fixed_image_size",
)  # fmt: skip


def model_facts(backend: str, model: str, options: dict[str, Any]) -> dict[str, Any]:
    """V, G, downsampling factor, layout, precision and a checksum of the model, read on the driver
    by the runtimes (runtimes.describe: opened here on a CPU, so that a bad option or model fails
    before Ray starts; read from its files for a GPU, which the driver may not have)."""
    from gsq_deploy.runtimes import describe

    info = describe(backend, model, **options).to_dict()
    return {key: info[key] for key in MODEL_FACTS}


def check_size(size: int | str, facts: dict[str, Any]) -> None:
    """--size must be a multiple of the downsampling factor, and match a static export's image size."""
    factor = facts["downsample_factor"]
    if size != preprocess.NATIVE and int(size) % factor:
        raise InputError(f"--size {size} is not a multiple of the model's downsampling factor {factor}")
    fixed = facts["fixed_image_size"]
    if fixed and (size == preprocess.NATIVE or [int(size), int(size)] != list(fixed)):
        raise InputError(
            f"{facts['model']}: a static export for {fixed[0]}x{fixed[1]} images; use --size {fixed[0]} "
            "or re-export with --dynamic"
        )


# -- the manifest ------------------------------------------------------------------------------------
def identity(facts: dict[str, Any], size: int | str, inputs: InputSet, output_format: str = "ours") -> dict[str, Any]:
    """What must stay the same for two runs to write into one DST."""
    tokenizer = {key: facts[key] for key in ("backend", "model_sha256", "precision", "num_embed", "num_group")}
    tokenizer.update(downsample_factor=facts["downsample_factor"], token_layout=facts["token_layout"])
    return {
        "tokenizer": tokenizer,
        "preprocessing": {"size": size},
        "inputs": {"format": inputs.format, "classes": list(inputs.classes) if inputs.classes else None},
        "output": {"format": output_format},
    }


def check_same_identity(folder: OutputFolder, manifest: dict[str, Any], wanted: dict[str, Any]) -> None:
    """OutputError naming the first difference between DST's runs and this one."""
    held = manifest.get("identity", {})
    for section, fields in wanted.items():
        for key, value in fields.items():
            before = held.get(section, {}).get(key)
            if (section, key) == ("output", "format") and before is None:
                before = "ours"  # folders written before --format existed
            if before != value:
                what = {"model_sha256": "model (sha256)"}.get(key, key.replace("_", " "))
                raise OutputError(
                    f"{folder.path}: holds tokens made with {section} {what} {_short(before)}, this run has "
                    f"{_short(value)}; choose another --output, or pass --overwrite to replace them"
                )


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:16] + "..." + text[-8:]


def new_manifest(
    facts: dict[str, Any], size: int | str, inputs: InputSet, token_dtype: str, output_format: str = "ours"
) -> dict[str, Any]:
    """A manifest for a new DST."""
    return {
        "format": MANIFEST_FORMAT,
        "format_version": MANIFEST_VERSION,
        "identity": identity(facts, size, inputs, output_format),
        "output_format": output_format,
        "tokenizer": {**facts, "token_dtype": token_dtype},
        "columns": _columns(facts, token_dtype) if output_format == "ours" else describe_format(output_format, facts["token_layout"]),
        "preprocessing": preprocess.describe(size),
        "inputs": inputs.describe(),
        "counts": {"tokenized": 0, "shards": 0, "failed": 0},
        "runs": [],
        "created": _now(),
    }


def _columns(facts: dict[str, Any], token_dtype: str) -> dict[str, str]:
    """The manifest's record of our shards' columns."""
    return {
        "id": "string, stable across runs (see docs/tokenize.md)",
        "label": "int64, null when unknown",
        "tokens": f"list<{token_dtype}>: the token grid flattened row-major over "
        + ("[token_height, token_width, G]" if facts["token_layout"] == "BHWG" else "[token_height, token_width]"),
        "token_height": "int32",
        "token_width": "int32",
    }


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


# -- the run -----------------------------------------------------------------------------------------
def choose_executor(config: TokenizeConfig) -> tuple[str, str]:
    """(executor, why): `local` runs the stages in this process, `ray` on Ray Data. `auto` takes Ray
    where it pays: a cluster asked for (--ray-address or RAY_ADDRESS), or a GPU backend (one actor
    per GPU); else in-process, which on one machine is never slower than a local Ray instance (its
    start-up costs 15-25 s, and its steady rate is no higher; docs/tokenize.md, "Executors")."""
    from .cluster import ray_address

    if config.executor not in EXECUTORS:
        raise InputError(f"--executor {config.executor!r} is not one of {', '.join(EXECUTORS)}")
    address = ray_address(config.ray_address)
    if config.executor == "local":
        if address is not None:
            raise InputError(f"--executor local runs in this process; it cannot use the Ray cluster at {address}")
        if config.num_cpus is not None:
            raise InputError("--num-cpus sizes a local Ray instance; --executor local uses this process (see --decoders, --threads)")
        return "local", "asked for with --executor local"
    if config.executor == "ray":
        return "ray", "asked for with --executor ray"
    if address is not None:
        return "ray", f"auto: the Ray cluster at {address}"
    if config.num_cpus is not None:
        return "ray", "auto: --num-cpus sizes a local Ray instance"
    if runtime_class(config.backend).runs_on_gpu(config.backend_options):
        return "ray", "auto: a GPU backend (one tokenizer actor per GPU)"
    return "local", "auto: no cluster asked for and a CPU backend; --executor ray for a local Ray instance"


def process_started() -> float:
    """When this process started (seconds since the epoch), from /proc; now where /proc has no answer."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime"))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return time.time()


def run_tokenize(config: TokenizeConfig) -> RunSummary:
    """Tokenize config.inputs into config.output; resumes a run that was killed part-way."""
    from .tokens import token_dtype

    size = preprocess.parse_size(config.size)
    if config.batch_size < 1:
        raise InputError(f"--batch-size {config.batch_size} must be >= 1")
    check_format(config.output_format)
    executor, reason = choose_executor(config)
    folder = OutputFolder(config.output, config.output_format)
    inputs = find_inputs(config.inputs, config.input_format, exclude=folder.path)
    facts = model_facts(config.backend, config.model, config.backend_options)
    check_size(size, facts)
    folder.layout = facts["token_layout"]
    dtype_name = token_dtype(facts["num_embed"]).name
    folder.open(config.overwrite)
    try:
        manifest = folder.read_manifest()
        if manifest is None:
            manifest = new_manifest(facts, size, inputs, dtype_name, config.output_format)
        else:
            check_same_identity(folder, manifest, identity(facts, size, inputs, config.output_format))
        recovered = folder.commit_staging()  # a killed run's complete shards
        done = folder.done_ids()
        for earlier in manifest["runs"]:
            if earlier.get("status") == "running":  # we hold the lock: that run was killed
                earlier["status"] = "interrupted"
        run = {
            "started": _now(),
            "status": "running",
            "executor": executor,
            "executor_reason": reason,
            "inputs": inputs.describe(),
            "backend_options": config.backend_options,
        }
        manifest["runs"].append(run)
        folder.write_manifest(manifest)
        started = time.perf_counter()
        run_one = _run_local if executor == "local" else _run_on_ray
        plan, commit, rates = run_one(config, size, facts, inputs, folder, done)
        seconds = time.perf_counter() - started
        commit.dropped_partial += recovered.dropped_partial
        totals = folder.counts()
        startup = rates.get("first_batch_at") and round(rates["first_batch_at"] - process_started(), 2)
        run.update(
            finished=_now(),
            status="complete",
            seconds=round(seconds, 2),
            tokenized=commit.rows,
            failed=commit.failed,
            recovered_from_killed_runs=recovered.rows,
            pipeline_seconds=rates.get("pipeline_seconds"),
            steady_images_per_s=rates.get("steady_images_per_s"),
            tokenizer_busy=rates.get("tokenizer_busy"),
            stages=rates.get("stages"),
            startup_seconds=startup,
            workers=plan.describe() if plan else None,
            ray_address=config.ray_address or ("local" if executor == "ray" else None),
        )
        manifest["counts"] = totals
        manifest["updated"] = _now()
        shutdown = rates.get("last_batch_at") and round(time.time() - rates["last_batch_at"], 2)
        run["shutdown_seconds"] = shutdown  # to the manifest's last write; the exit follows at once
        folder.write_manifest(manifest)
        return RunSummary(
            folder.path,
            commit.rows,
            commit.failed,
            len(done),
            seconds,
            totals,
            commit,
            plan,
            rates.get("steady_images_per_s"),
            executor,
            reason,
            rates.get("stages"),
            startup or None,
            shutdown or None,
        )
    finally:
        folder.close()


def _run_local(
    config: TokenizeConfig,
    size: int | str,
    facts: dict[str, Any],
    inputs: InputSet,
    folder: OutputFolder,
    done: frozenset[str],
) -> tuple[LocalPlan, CommitResult, dict[str, Any]]:
    """The stages in this process (gsq_dataset.local): one tokenizer with the machine's cores as
    threads, decoder threads feeding it."""
    from .local import run_local

    cores = len(os.sched_getaffinity(0))
    runtime = runtime_class(config.backend)
    calls = 1
    if runtime.runs_on_gpu(config.backend_options):  # one runtime on the device (Ray spreads over several)
        worker_plan = WorkerPlan(1, 1.0, 1.0, config.threads, 0.0)
    else:  # one runtime with the machine's cores as threads (--threads)
        threads = config.threads
        if threads is None and runtime.concurrent_calls and cores >= 2:
            # calls of cores / 2 threads each, two at once, beat one call on all cores (runtimes.onnx: 1.07x on 2 cores)
            calls, threads = 2, max(1, cores // 2)
        worker_plan = plan_workers(runtime, config.backend_options, [NodeResources(float(cores))], 1, threads)
    options, torch_threads = runtime_options(runtime, config.backend_options, worker_plan)
    plan = LocalPlan(
        decoders=config.decoders or max(1, cores - 1),
        threads=worker_plan.threads,
        batch_size=config.batch_size,
        rows_per_shard=config.rows_per_shard,
        tokenizer_calls=calls,
    )
    run_dir = folder.new_run_dir()
    pipeline_started = time.perf_counter()
    rates = run_local(
        plan,
        (config.backend, config.model, options, torch_threads),
        facts["num_embed"],
        size,
        facts["downsample_factor"],
        inputs,
        done,
        run_dir,
        config.progress,
    )
    rates["pipeline_seconds"] = round(time.perf_counter() - pipeline_started, 2)
    return plan, folder.commit_staging(), rates


def _run_on_ray(
    config: TokenizeConfig,
    size: int | str,
    facts: dict[str, Any],
    inputs: InputSet,
    folder: OutputFolder,
    done: frozenset[str],
) -> tuple[WorkerPlan, CommitResult, dict[str, Any]]:
    from .cluster import ray_address, ray_session

    address = ray_address(config.ray_address)
    log_path = folder.new_log_path()
    with ray_session(address, config.num_cpus, config.connect_timeout_s, log_path) as session:
        nodes = session.nodes
        # Ray is imported only now: it reads its environment settings (set by ray_session) on import.
        import ray
        import ray.data

        from .sources import source_dataset
        from .stages import ProgressCounter, Tokenizer, actor_pool_args, prepare_batch

        runtime = runtime_class(config.backend)
        plan = plan_workers(runtime, config.backend_options, nodes, config.workers, config.threads)
        options, torch_threads = runtime_options(runtime, config.backend_options, plan)
        _quiet_ray_data()
        dataset, todo = source_dataset(inputs, done, plan.task_cpus)
        if dataset is None:
            return plan, folder.commit_staging(), {}
        run_dir = folder.new_run_dir()
        failed_dir = str(run_dir / "failed")
        counter = ProgressCounter.remote()
        dataset = dataset.map_batches(
            prepare_batch,
            batch_format="pyarrow",
            batch_size=config.batch_size,
            fn_kwargs={
                "size": size,
                "factor": facts["downsample_factor"],
                "failed_dir": failed_dir,
                "counter": counter,
            },
            num_cpus=plan.task_cpus,
        )
        dataset = dataset.map_batches(
            Tokenizer,
            **actor_pool_args(plan, config.batch_size),
            fn_constructor_kwargs={
                "backend": config.backend,
                "model": config.model,
                "options": options,
                "num_embed": facts["num_embed"],
                "failed_dir": failed_dir,
                "counter": counter,
                "torch_threads": torch_threads,
            },
        )
        pipeline_started = time.perf_counter()
        with _Progress(counter, todo, config.progress, session.console):
            try:
                dataset.write_parquet(
                    str(run_dir / "shards"),
                    min_rows_per_file=config.rows_per_shard,
                    ray_remote_args={"num_cpus": plan.task_cpus},
                )
            except Exception as error:  # Ray wraps what failed inside a task or actor
                raise _user_error(error) from None
        decoders = max(1, int(sum(node.cpus for node in nodes)))
        rates = {
            "pipeline_seconds": round(time.perf_counter() - pipeline_started, 2),
            **ray.get(counter.timings.remote(plan.workers, decoders)),
        }
        return plan, folder.commit_staging(), rates


def _quiet_ray_data() -> None:
    """Our progress line replaces Ray Data's bars and its per-run INFO logging."""
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.enable_operator_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)


def _user_error(error: BaseException) -> GSQError:
    """The GSQError inside Ray's wrappers (an actor that could not load the model...), else a one-line summary."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, GSQError):
            return current
        current = getattr(current, "cause", None) or current.__cause__ or current.__context__
    text = str(error).strip().splitlines()
    return GSQError(f"tokenizing failed: {type(error).__name__}: {text[0] if text else ''}")


class _Progress:
    """A progress line on the driver: rows tokenized, img/s, failed samples (from the ProgressCounter)."""

    def __init__(self, counter: Any, total: int | None, enabled: bool, console: Any, interval_s: float = 1.0):
        self.counter, self.total, self.enabled, self.interval_s = counter, total, enabled, interval_s
        self.console = console
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "_Progress":
        if self.enabled:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        import ray
        from tqdm import tqdm

        interactive = self.console.isatty()
        bar = tqdm(
            total=self.total,
            unit="img",
            desc="tokenize",
            file=self.console,
            mininterval=self.interval_s if interactive else 10.0,
            dynamic_ncols=True,
        )
        done = 0
        try:
            while True:
                stopping = self._stop.wait(self.interval_s)
                try:
                    tokenized, failed = ray.get(self.counter.totals.remote(), timeout=10)
                except Exception:  # the counter is gone (shutdown); keep the last numbers
                    break
                bar.set_postfix_str(f"failed={failed}", refresh=False)
                bar.update(tokenized + failed - done)
                done = tokenized + failed
                if stopping:
                    break
        finally:
            bar.close()
