"""`python -m gsq_core`: inspect checkpoints and round-trip images through the eager model."""

from __future__ import annotations

from pathlib import Path

import click

from .console import run_command


@click.group()
def main() -> None:
    """GSQ tokenizer (eager PyTorch reference)."""
    from .extras import require_torch

    require_torch("python -m gsq_core")  # every command runs the eager model


@main.command()
@click.argument("checkpoint")
def info(checkpoint: str) -> None:
    """Print a checkpoint's configuration (path, or a named checkpoint such as 'default')."""
    from .api import load_tokenizer
    from .checkpoint import config_summary

    model = load_tokenizer(checkpoint)
    parameters = sum(p.numel() for p in model.parameters())
    click.echo(config_summary(model.config))
    click.echo(f"parameters: {parameters:,}")
    click.echo(model.config.to_json())


@main.command()
@click.option("--ckpt", "checkpoint", default="default", show_default=True, help="Checkpoint path or name.")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Folder for reconstructions.")
@click.option("--resize", default=None, help="Resize every image to HxW first.")
@click.option("--overwrite", is_flag=True, help="Replace existing output files.")
@click.argument("images", nargs=-1, required=True)
def roundtrip(checkpoint: str, out_dir: Path, resize: str | None, overwrite: bool, images: tuple[str, ...]) -> None:
    """Encode images to tokens and decode them back; print tokens shape and PSNR per image."""
    import torch

    from .api import load_tokenizer
    from .fidelity import psnr
    from .images import expand_image_paths, parse_size, read_image, write_image

    model = load_tokenizer(checkpoint)
    size = parse_size(resize) if resize else None
    for path in expand_image_paths(images):
        loaded = read_image(path, size)
        batch = torch.from_numpy(loaded.pixels[None])
        codes = model.encode(batch)
        recon = model.decode(codes)[0].clamp(-1, 1).numpy()
        target = out_dir / f"{path.stem}.png"
        write_image(target, recon, overwrite=overwrite)
        click.echo(f"{path.name}: tokens {list(codes.shape)} -> {target} PSNR {psnr(loaded.pixels, recon):.2f} dB")


def run() -> None:
    """Console entry: one-line errors, no tracebacks, for user mistakes."""
    run_command(main, "python -m gsq_core")


if __name__ == "__main__":
    run()
