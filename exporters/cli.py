"""`gsq-export`: export a checkpoint to deployable graphs, validate them against eager, summarise.

gsq-export --ckpt model.pt --target onnx --out out/model-onnx
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from gsq_core.checkpoint_options import checkpoint_loading_options
from gsq_core.console import run_command

from . import GRAPH_NAMES, TARGETS, ExportValidationError, target_options
from .staging import StageLog, check_destination, destination_lock

EXIT_VALIDATION_FAILED = 1  # an artifact was written but failed validation against eager


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--ckpt", "checkpoint", required=True,
    help="Checkpoint: flex_gen .pt, IBQ Lightning .ckpt, native .safetensors, or a name.",
)
@checkpoint_loading_options
@click.option("--target", default="onnx", show_default=True, help=f"Export target ({', '.join(TARGETS)}).")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Artifact directory to write.")
@click.option("--opset", type=int, default=17, show_default=True, help="ONNX opset (14..20).")
@click.option("--dynamic/--static", default=True, show_default=True, help="Symbolic batch/height/width, or fixed.")
@click.option("--batch-size", type=int, default=None, help="Fixed batch size (with --static; default 1).")
@click.option("--image-size", default=None, help="Fixed image size HxW (with --static).")
@click.option(
    "--graphs",
    multiple=True,
    help=f"Graphs to write, repeated or comma-separated (default: all of {', '.join(GRAPH_NAMES)}).",
)
@click.option("--validate/--no-validate", default=True, show_default=True, help="Compare every graph with eager.")
@click.option(
    "--calib-images", type=click.Path(path_type=Path), default=None, help="Folder of images to validate with."
)
@click.option("--overwrite", is_flag=True, help="Replace an existing artifact directory.")
@target_options.click_options
def export_command(
    checkpoint: str,
    target: str,
    out_dir: Path,
    opset: int,
    dynamic: bool,
    batch_size: int | None,
    image_size: str | None,
    graphs: tuple[str, ...],
    validate: bool,
    calib_images: Path | None,
    overwrite: bool,
    config: str | None,
    ema: bool,
    **more_options: Any,
) -> None:
    """Export a GSQ tokenizer checkpoint (e.g. --target onnx) and validate it against eager PyTorch."""
    from gsq_core.extras import require_torch
    from gsq_core.images import parse_size

    from .build import ExportOptions, check_target, export

    require_torch("gsq-export")  # the eager model is the export's source and its reference
    names = [name.strip() for item in graphs for name in item.split(",") if name.strip()] or list(GRAPH_NAMES)
    options = ExportOptions(
        opset=opset,
        dynamic=dynamic,
        image_size=parse_size(image_size) if image_size else None,
        batch_size=batch_size,
        graphs=tuple(names),  # unknown names fail here, before the checkpoint loads
        validate=validate,
        calib_images=calib_images,
        overwrite=overwrite,
        progress=True,
        **target_options.export_options(target, more_options),
    )
    check_target(target, options)  # precisions, foreign options, missing packages: before the slow part
    check_destination(out_dir, overwrite)
    # Held until the command ends: a second export into out_dir fails here, before loading anything.
    click.get_current_context().with_resource(destination_lock(out_dir))
    if calib_images is not None:
        from .calibration import check_calibration_folder

        check_calibration_folder(calib_images)
    log = StageLog()
    from gsq_core.api import load_tokenizer, resolve_checkpoint
    from gsq_core.checkpoint import config_summary

    from .manifest import file_checksum

    model = load_tokenizer(checkpoint, config=config, ema=ema)
    source = {"checkpoint": str(checkpoint), "sha256": file_checksum(resolve_checkpoint(checkpoint))["sha256"]}
    if config is not None:
        source["config"] = str(config)
    if not ema:
        source["weights"] = "raw (--no-ema)"
    log.done(f"loaded {checkpoint}: {config_summary(model.config)}")
    try:
        manifest = export(model, out_dir, target, replace(options, source=source))
    except ExportValidationError as error:
        print_summary(error.manifest, out_dir)
        raise
    print_summary(manifest, out_dir)


def print_summary(manifest: dict[str, Any], out_dir: Path) -> None:
    """One table: every graph, its I/O, size and how it compares with eager."""
    from rich.console import Console
    from rich.table import Table

    validation = manifest.get("validation") or {}
    results = validation.get("graphs", {})
    table = Table(title=f"{manifest['target']} export -> {out_dir} ({manifest['precision']})")
    for column in ("graph", "precision", "inputs", "outputs", "MB", "against eager", "status"):
        table.add_column(column, justify="right" if column == "MB" else "left")
    for name, entry in manifest["graphs"].items():
        result = results.get(name)
        status = (
            "not validated" if result is None else ("[green]pass[/green]" if result["passed"] else "[red]FAIL[/red]")
        )
        table.add_row(
            entry["file"],
            _precision_text(entry),
            _io_text(entry["inputs"]),
            _io_text(entry["outputs"]),
            f"{manifest['files'][entry['file']]['size'] / 1e6:.1f}",
            _fidelity_text(result) if result else "-",
            status,
        )
    for name, result in validation.get("paths", {}).items():
        table.add_row(
            f"({name})", result.get("precision", ""), "", "", "", _fidelity_text(result),
            "[green]pass[/green]" if result["passed"] else "[red]FAIL[/red]",
        )  # fmt: skip
    Console(width=None if sys.stdout.isatty() else 160).print(table)


def _precision_text(entry: dict[str, Any]) -> str:
    """A graph's precision, with its fp32 lookup and its OpenVINO hint where it has them."""
    text = entry.get("precision", "")
    if entry.get("lookup_precision") and entry.get("lookup_precision") != text:
        text += f" (lookup {entry['lookup_precision']})"
    if entry.get("inference_precision"):
        text += f", hint {entry['inference_precision']}"
    return text


def _io_text(tensors: list[dict[str, Any]]) -> str:
    from rich.markup import escape

    return escape(", ".join(f"{t['name']} {t['dtype']}[{','.join(str(d) for d in t['shape'])}]" for t in tensors))


def _fidelity_text(result: dict[str, Any]) -> str:
    if result.get("errors"):
        return "error: " + result["errors"][0]
    if "latent_relative_error" in result:
        relative = result["latent_relative_error"]
        return "latent holds NaN / inf" if relative is None else f"latent rel. err {relative:.1e}"
    if "token_agreement" in result:
        return f"tokens {result['token_agreement']:.2%} same, max gap {result['max_score_gap']:.1e}"
    psnr_db = result.get("recon_psnr_db")
    text = "recon identical" if psnr_db is None else f"recon PSNR {psnr_db:.1f} dB"
    drop = result.get("psnr_vs_input_drop_db")
    return text if drop is None else f"{text}, vs input {-drop:+.2f} dB"


def main() -> None:
    """Console entry (`gsq-export`): one-line errors and a non-zero exit, no tracebacks, for user mistakes."""
    run_command(export_command, "gsq-export", {ExportValidationError: EXIT_VALIDATION_FAILED})
