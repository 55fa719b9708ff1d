"""One build skeleton for every target: typed options, a source artifact, a build step, validation
through the runtime users load, an atomic install.

    from gsq_deploy.exporters.build import ExportOptions, export
    from gsq_deploy.exporters.precision import PrecisionPlan
    manifest = export(model, "out/model-ov", "openvino", ExportOptions(precision=PrecisionPlan.parse("int8")))

A target is a `Target` declared in its own module (exporters.onnx, .openvino, .tensorrt, .triton)
and named by one line in exporters.TARGETS. It says which precisions it builds, which typed options
it takes (their gsq-export flags come from the option dataclasses' fields), which artifact it is
converted from (`source`: e.g. OpenVINO IR from the ONNX graphs of the same precision, TensorRT
from fp32 or int8-QDQ ONNX), the step that writes its files (`build`), and the runtime backend
that validates the result. The skeleton does the rest, the same way for every target:

1. refuse early (`check_target`): precisions the target has no build for, options of another
   target, missing packages; before the checkpoint's graphs are traced;
2. export the source artifact (recursively, with this skeleton) into a temporary folder;
3. run the build step in a staging folder beside the destination;
4. write the manifest there, open the staged artifact with `runtimes.load_runtime(target.runtime,
   staging, ...)` and validate every graph through that runtime (exporters.validation);
5. move the staging folder into place; raise ExportValidationError (after installing, so the
   failed artifact can be inspected) when validation failed.
"""

from __future__ import annotations

import copy
import importlib
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from gsq_core.console import termination_unwinds

from . import GRAPH_NAMES, TARGETS, ExportError, select_graphs
from .manifest import MANIFEST_NAME, write_manifest
from .precision import LOOKUP_GRAPHS, LOOKUP_PRECISION, PrecisionPlan
from .staging import StageLog, check_destination, install_artifact, raise_if_failed, staging_folder
from .validation import check_overrides, summary_line, validate_graphs

if TYPE_CHECKING:
    from gsq_core.model import GSQTokenizer

DEFAULT_OPSET = 17
LOOKUP_CODE_BLOCK = 65536  # codes per lookup block in the graphs (exporters.graphs says why)

OptionsT = TypeVar("OptionsT")


@dataclass(frozen=True)
class ExportOptions:
    """What every target takes; gsq-export's common flags map onto it one to one.

    precision: the PrecisionPlan, parsed where the user gave it (PrecisionPlan.parse("int8"),
    PrecisionPlan.parse("encoder=fp32,decoder=int8"); exporters.precision: the quantizer lookup is
    fp32 in every build, fused graphs follow their parts); a string is refused, never re-parsed.
    tolerance_overrides: gsq-export's threshold flags (exporters.validation.Tolerances' flag fields),
    applied to every reduced-precision graph's tolerances; an unknown name is refused here.
    target_options holds the target's own typed options (e.g. exporters.tensorrt.TensorRTOptions);
    a target gets its defaults when absent.
    """

    precision: PrecisionPlan = PrecisionPlan()
    opset: int = DEFAULT_OPSET
    dynamic: bool = True
    image_size: tuple[int, int] | None = None
    batch_size: int | None = None
    graphs: tuple[str, ...] = GRAPH_NAMES
    code_block: int = LOOKUP_CODE_BLOCK
    lookup: str = "auto"  # "auto": the window lookup where proven (d <= 2), else dense; "dense" (exporters.graphs)
    validate: bool = True
    calib_images: Path | None = None
    tolerance_overrides: Mapping[str, float] = field(default_factory=dict)
    overwrite: bool = False
    progress: bool = True
    source: dict[str, Any] | None = None  # the checkpoint's facts for the manifest
    target_options: tuple[Any, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "graphs", tuple(select_graphs(self.graphs)))
        if not isinstance(self.precision, PrecisionPlan):
            raise TypeError(f"precision must be a PrecisionPlan (PrecisionPlan.parse(text)), not {self.precision!r}")
        object.__setattr__(self, "tolerance_overrides", check_overrides(self.tolerance_overrides))
        if self.calib_images is not None:
            object.__setattr__(self, "calib_images", Path(self.calib_images))
        if self.lookup not in ("auto", "dense"):
            raise ExportError(f"unknown lookup {self.lookup!r}; choose auto or dense")

    @property
    def precisions(self) -> set[str]:
        """Every precision some graph of this build uses."""
        return {self.precision.for_graph(graph) for graph in self.graphs}

    def options_of(self, kind: type[OptionsT]) -> OptionsT:
        """The target options of this type, or its defaults."""
        return next((value for value in self.target_options if isinstance(value, kind)), None) or kind()


@dataclass(frozen=True)
class SourceRequest:
    """The artifact a target is converted from: a target and precision plan, built with this skeleton."""

    target: str
    precision: PrecisionPlan
    validate: bool = False  # validate the source itself (Triton serves it as it is)
    graphs: tuple[str, ...] | None = None  # None: the graphs asked for


@dataclass(frozen=True)
class SourceArtifact:
    """An artifact this package just wrote, read back as the input of a conversion."""

    directory: Path
    manifest: dict[str, Any]

    @classmethod
    def read(cls, directory: str | Path) -> SourceArtifact:
        """The artifact read as runtimes read it (schema, files inside the folder, checksums)."""
        from gsq_deploy.runtimes.artifacts import load_artifact

        path = Path(directory) / MANIFEST_NAME
        if not path.is_file():
            raise ExportError(f"{directory}: no {MANIFEST_NAME}; convert an artifact directory written by gsq-export")
        return cls(Path(directory), load_artifact(directory).manifest)

    @property
    def graphs(self) -> dict[str, dict[str, Any]]:
        return self.manifest["graphs"]

    def graph_path(self, name: str) -> Path:
        from gsq_deploy.runtimes.artifacts import contained_path

        return contained_path(self.directory, self.graphs[name]["file"], f"graph {name}'s file")

    def fixed_shape(self) -> tuple[int | None, tuple[int, int] | None]:
        """(batch, (H, W)) of a static export; (None, None) for a dynamic one."""
        shapes = self.manifest.get("shapes") or {}
        size = shapes.get("image_size")
        return shapes.get("batch"), (tuple(size) if size else None)  # type: ignore[return-value]

    def manifest_copy(self) -> dict[str, Any]:
        """A deep copy of the manifest, for the converted artifact's own."""
        return copy.deepcopy(self.manifest)


@dataclass(frozen=True)
class BuildStep:
    """What a target's build step gets: it writes its files into `staging` and returns the manifest
    (files checksummed, validation left to the skeleton)."""

    model: GSQTokenizer | None  # None for a conversion that needs no model (a Triton repository)
    source: SourceArtifact | None  # None for the ONNX graphs traced from the model
    staging: Path
    options: ExportOptions
    log: StageLog


def _no_source(options: ExportOptions) -> SourceRequest | None:
    return None


def _no_runtime_options(options: ExportOptions) -> dict[str, Any]:
    return {}


def _no_check(options: ExportOptions) -> None:
    return None


@dataclass(frozen=True)
class Target:
    """One export target, declared in its own module: what it accepts and how it is built."""

    name: str
    precisions: tuple[str, ...]
    build: Callable[[BuildStep], dict[str, Any]]
    source: Callable[[ExportOptions], SourceRequest | None] = _no_source
    runtime: str | None = None  # the runtimes backend that validates it; None: carries its source's report
    runtime_options: Callable[[ExportOptions], dict[str, Any]] = _no_runtime_options
    option_types: tuple[type, ...] = ()  # its own typed options, offered as gsq-export flags
    check: Callable[[ExportOptions], None] = _no_check  # one-line refusals before any work
    # validation batches this target can run (e.g. inside a TensorRT profile); default: all
    fit_batches: Callable[[list[np.ndarray], dict[str, Any]], list[np.ndarray]] | None = None


def load_target(name: str) -> Target:
    """The Target declared for a name in exporters.TARGETS (its module imported now)."""
    if name not in TARGETS:
        raise ExportError(f"unknown target {name!r}; available: {', '.join(TARGETS)}")
    module_name, attribute = TARGETS[name].split(":")
    return getattr(importlib.import_module(module_name), attribute)


def check_target(name: str, options: ExportOptions) -> Target:
    """The target, after refusing what it cannot build here (precision, foreign options, packages),
    for it and, recursively, for the artifact it is converted from."""
    target = load_target(name)
    unsupported = options.precision.unsupported(target.precisions)
    if unsupported:
        raise ExportError(
            f"--precision {unsupported} is not available for --target {name} (choose {', '.join(target.precisions)})"
        )
    for value in options.target_options:
        if not isinstance(value, target.option_types):
            raise ExportError(f"{type(value).__name__} does not apply to --target {name}")
    target.check(options)
    request = target.source(options)
    if request is not None:
        check_target(request.target, source_options(options, request))
    return target


def source_options(options: ExportOptions, request: SourceRequest) -> ExportOptions:
    """The options the source artifact is exported with."""
    source_target = load_target(request.target)
    return replace(
        options,
        precision=request.precision,
        validate=request.validate and options.validate,
        graphs=request.graphs or options.graphs,
        overwrite=False,
        target_options=tuple(value for value in options.target_options if isinstance(value, source_target.option_types)),
    )


@termination_unwinds()  # SIGTERM / SIGHUP remove the staging and source folders, as Ctrl-C does
def export(model: GSQTokenizer, out_dir: str | Path, target: str, options: ExportOptions | None = None) -> dict:
    """Export the model for a target into out_dir; return the manifest.

    Raises ExportError for bad options or an existing out_dir (without overwrite), and
    ExportValidationError (after writing the artifact, its manifest marked failed) when a graph
    disagrees with eager beyond tolerance.
    """
    options = options or ExportOptions()
    spec = check_target(target, options)
    out_dir = Path(out_dir)
    check_destination(out_dir, options.overwrite)
    request = spec.source(options)
    if request is None:
        return _build(model, None, out_dir, spec, options)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out_dir.name}.source-", dir=out_dir.parent) as work:
        source_dir = Path(work) / request.target
        export(model, source_dir, request.target, source_options(options, request))
        return _build(model, SourceArtifact.read(source_dir), out_dir, spec, options)


@termination_unwinds()
def convert(
    model: GSQTokenizer | None,
    source_dir: str | Path,
    out_dir: str | Path,
    target: str,
    options: ExportOptions | None = None,
) -> dict:
    """Build a target from an artifact written before (what export() makes in a temporary folder)."""
    options = options or ExportOptions()
    source = SourceArtifact.read(source_dir)
    spec = load_target(target)
    request = spec.source(options)
    if request is None:
        raise ExportError(f"--target {target} --precision {options.precision} is traced from the model, not converted")
    found = (source.manifest.get("target"), source.manifest.get("precision"))
    if found != (request.target, str(request.precision)):  # the manifest records the canonical spec
        raise ExportError(
            f"{source_dir}: --target {target} --precision {options.precision} converts a {request.target} "
            f"{request.precision} artifact, found {found[0]} {found[1]}"
        )
    check_target(target, options)
    out_dir = Path(out_dir)
    check_destination(out_dir, options.overwrite)
    return _build(model, source, out_dir, spec, options)


def _build(
    model: GSQTokenizer | None, source: SourceArtifact | None, out_dir: Path, target: Target, options: ExportOptions
) -> dict:
    """Steps 3-5: build into a staging folder, validate through the runtime, install."""
    from .calibration import photos_for

    log = StageLog(options.progress)
    validating = options.validate and target.runtime is not None
    if validating and model is None:
        raise ExportError(f"--target {target.name}: validation needs the model")
    photos = photos_for(options.calib_images) if validating else []  # a bad folder fails before the work
    model = _cpu_fp32(model) if model is not None else None
    was_training = model.training if model is not None else False
    try:
        with staging_folder(out_dir, options.overwrite) as staging:
            if model is not None:
                model.eval()
            manifest = target.build(BuildStep(model, source, staging, options, log))
            record_precisions(manifest, options.precision)
            if target.runtime is not None:
                manifest["validation"] = None
            if validating:
                assert model is not None and target.runtime is not None
                manifest["validation"] = validate_staged(model, staging, manifest, target, options, photos, log)
            install_artifact(staging, out_dir, manifest, log)
    finally:
        if model is not None:
            model.train(was_training)
    raise_if_failed(manifest)
    return manifest


def record_precisions(manifest: dict[str, Any], plan: PrecisionPlan) -> None:
    """The precision facts runtimes read, written the same way for every target: the spec string
    (`precision`), each part's (`precisions`), each graph's (`graphs.<name>.precision`), and
    `lookup_precision` on the graphs that hold the codebook lookup."""
    manifest["precision"] = str(plan)
    manifest["precisions"] = plan.to_manifest()
    for name, entry in manifest["graphs"].items():
        entry["precision"] = plan.for_graph(name)
        if name in LOOKUP_GRAPHS:
            entry["lookup_precision"] = LOOKUP_PRECISION
        else:
            entry.pop("lookup_precision", None)


def composed_calls(graphs: Mapping[str, Any]) -> tuple[str, ...]:
    """The runtime calls no single graph answers (encode as encoder + quantizer, when there is no
    fused tokenize): validation runs them through the runtime too."""
    return ("encode",) if "tokenize" not in graphs and {"encoder", "quantizer"} <= set(graphs) else ()


def validate_staged(
    model: GSQTokenizer,
    staging: Path,
    manifest: dict[str, Any],
    target: Target,
    options: ExportOptions,
    photos: list[tuple[str, np.ndarray]],
    log: StageLog,
) -> dict[str, Any]:
    """Open the staged artifact with the runtime users load and validate every graph through it."""
    from gsq_deploy.runtimes import load_runtime

    from .calibration import validation_batches
    from .graphs import ShapePlan, graph_specs

    assert target.runtime is not None
    write_manifest(staging, manifest)  # the runtime reads the artifact exactly as it will be installed
    shapes = manifest.get("shapes") or {}
    size = tuple(shapes["image_size"]) if shapes.get("image_size") else None
    batches = validation_batches(photos, model.downsample_factor, shapes.get("batch"), size)  # type: ignore[arg-type]
    if target.fit_batches is not None:
        batches = target.fit_batches(batches, manifest)
    specs = graph_specs(model, ShapePlan.dynamic())
    log.start()
    runtime = load_runtime(target.runtime, staging, **target.runtime_options(options))
    try:
        report = validate_graphs(
            model,
            [specs[name] for name in manifest["graphs"]],
            runtime,
            batches,
            options.precision,
            image_names=[name for name, _ in photos],
            tolerance_overrides=options.tolerance_overrides,
            paths=composed_calls(manifest["graphs"]),
        )
        info = runtime.info
    finally:
        runtime.close()
    report["images"]["source"] = str(options.calib_images) if options.calib_images else "scikit-image samples"
    settings = info.to_dict()["settings"]  # the runtime's own settings that decide numerics
    report["runtime"] = {"backend": info.backend, "device": info.device}
    report["runtime"] |= {key: settings[key] for key in ("providers", "inference_precision", "tensorrt") if key in settings}
    log.done(summary_line(report, sum(len(batch) for batch in batches)))
    return report


def _cpu_fp32(model: GSQTokenizer) -> GSQTokenizer:
    """The model itself when it is already fp32 on CPU, else an fp32 CPU copy (the caller's stays put)."""
    import torch

    parameter = next(model.parameters())
    if parameter.device.type == "cpu" and parameter.dtype == torch.float32:
        return model
    return copy.deepcopy(model).float().cpu()

