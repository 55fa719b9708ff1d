"""`python -m gsq_core`: inspect checkpoints and round-trip images through the eager model."""

from __future__ import annotations

from pathlib import Path

import click

from .checkpoint_options import checkpoint_loading_options
from .console import run_command


@click.group()
def main() -> None:
    """GSQ tokenizer (eager PyTorch reference)."""
    from .extras import require_torch

    require_torch("python -m gsq_core")  # every command runs the eager model


@main.command()
@click.argument("checkpoint")
@checkpoint_loading_options
def info(checkpoint: str, config: str | None, ema: bool) -> None:
    """Print a checkpoint's configuration (path, or a named checkpoint such as 'default')."""
    from .api import load_tokenizer
    from .checkpoint import config_summary

    model = load_tokenizer(checkpoint, config=config, ema=ema)
    parameters = sum(p.numel() for p in model.parameters())
    click.echo(config_summary(model.config))
    click.echo(f"family: {model.family}, tokens {model.quantizer.token_layout}, lookup score: "
               f"{'minus squared distance' if model.quantizer.uses_distance else 'dot product'} "
               f"({model.quantizer.lookup_normalization} normalisation)")
    click.echo(f"parameters: {parameters:,}")
    click.echo(model.config.to_json())


@main.command()
@click.option("--ckpt", "checkpoint", default="default", show_default=True, help="Checkpoint path or name.")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Folder for reconstructions.")
@click.option("--resize", default=None, help="Resize every image to HxW first.")
@click.option(
    "--max-pixels", type=click.IntRange(min=1), default=None, help="Largest image to decode (default 64 MP, $GSQ_MAX_PIXELS)."
)
@click.option("--overwrite", is_flag=True, help="Replace existing output files.")
@checkpoint_loading_options
@click.argument("images", nargs=-1, required=True)
def roundtrip(
    checkpoint: str, out_dir: Path, resize: str | None, max_pixels: int | None, overwrite: bool, config: str | None,
    ema: bool, images: tuple[str, ...],
) -> None:
    """Encode images to tokens and decode them back; print tokens shape and PSNR per image.

    Every input and output is checked before the model loads or the first file is written."""
    import torch

    from .api import load_tokenizer
    from .budgets import check_work
    from .errors import InputError
    from .fidelity import psnr
    from .images import expand_image_paths, inspect_image, parse_size, read_image, write_image
    from .outputs import check_output_files

    size = parse_size(resize) if resize else None
    paths = expand_image_paths(images)
    targets = [out_dir / f"{path.stem}.png" for path in paths]
    check_output_files(out_dir, targets, overwrite, inputs=paths, made_from=paths)
    headers = [inspect_image(path, max_pixels=max_pixels) for path in paths]
    model = load_tokenizer(checkpoint, config=config, ema=ema)
    f = model.downsample_factor
    for header in headers:
        height, width = size or (header.height, header.width)
        where = f"--resize {resize}" if size else header.name
        if height % f or width % f:
            raise InputError(f"{where}: size {height}x{width} is not a multiple of the downsampling factor {f}; pass --resize HxW")
        if (height // f) * (width // f) < model.min_token_positions:
            raise InputError(
                f"{where}: a {height}x{width} image gives a {height // f}x{width // f} token grid, which this model "
                f"cannot decode (adaptive group norm needs at least 2 tokens); pass --resize HxW, at least {f}x{2 * f}"
            )
        check_work(model.config, height, width, "decode", label=where)  # decode needs more than encode
        if size:
            break
    for header in headers:
        for note in header.notes:
            click.echo(f"note: {note}", err=True)
    for path, target in zip(paths, targets, strict=True):
        loaded = read_image(path, size, max_pixels)
        batch = torch.from_numpy(loaded.pixels[None])
        codes = model.encode(batch)
        recon = model.decode(codes)[0].clamp(-1, 1).numpy()
        write_image(target, recon, overwrite=overwrite)
        click.echo(f"{path.name}: tokens {list(codes.shape)} -> {target} PSNR {psnr(loaded.pixels, recon):.2f} dB")


def run() -> None:
    """Console entry: one-line errors, no tracebacks, for user mistakes."""
    run_command(main, "python -m gsq_core")


if __name__ == "__main__":
    run()
