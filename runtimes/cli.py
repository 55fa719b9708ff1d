"""The command line every runtime module shares: `python -m runtimes.<backend> encode|decode ...`.

    encode --model M --output tokens.npz [--batch-size N] [--resize HxW] IMAGE_OR_DIR...
        writes `codes` (int64 [N,h,w,G], [N,h,w] for plain VQ) and `paths` (input order kept)
    decode --model M --tokens tokens.npz --output OUTDIR
        writes OUTDIR/<input stem>.png in the same order
    decode --model M --tokens DST --output OUTDIR [--ids ID,ID...] [--limit N]
        a gsq-tokenize output folder: writes OUTDIR/<id>.png for the chosen token grids

Bad input ends in one line `error: <file>: <problem>` on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import os
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import click
import numpy as np

from gsq_core.console import run_command
from gsq_core.errors import InputError
from gsq_core.images import ImageHeader, expand_image_paths, inspect_image, parse_size, read_image, write_image
from gsq_core.outputs import check_output_file, check_output_files

from . import command, load_runtime
from .base import TokenizerRuntime, check_codes
from .info import ModelInfo
from .token_file import TokenFile, read_token_file

PROGRESS_MIN_IMAGES = 8  # show a progress bar above this many images


def run_cli(backend: str, model_help: str, options: Sequence[Callable]) -> None:
    """Build the encode/decode group for one backend and run it with one-line errors."""
    run_command(build_cli(backend, model_help, options), command(backend))


def build_cli(backend: str, model_help: str, options: Sequence[Callable]) -> click.Group:
    """A click group with encode and decode; `options` are the backend's own (provider, device...)."""

    def backend_options(command: Callable) -> Callable:
        for option in reversed(options):
            command = option(command)
        return command

    @click.group(help=f"Tokenize images with the {backend} runtime, and decode tokens back to images.")
    def group() -> None:
        pass

    @group.command(help="Encode images (files or folders) to token ids in one .npz file.")
    @click.option("--model", required=True, help=model_help)
    @click.option("--output", required=True, type=click.Path(path_type=Path), help="The tokens .npz to write.")
    @click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
    @click.option("--resize", default=None, help="Resize every image to HxW (multiples of the downsampling factor).")
    @click.option(
        "--max-pixels",
        type=click.IntRange(min=1),
        default=None,
        help="Largest image to decode, in pixels (default 64 MP, or $GSQ_MAX_PIXELS).",
    )
    @click.option("--overwrite", is_flag=True, help="Replace an existing output file.")
    @backend_options
    @click.argument("images", nargs=-1, required=True)
    def encode(
        model: str,
        output: Path,
        batch_size: int,
        resize: str | None,
        max_pixels: int | None,
        overwrite: bool,
        images: tuple[str, ...],
        **backend_kwargs: Any,
    ) -> None:
        size = parse_size(resize) if resize else None
        paths = expand_image_paths(images)
        check_output_file(output, overwrite, inputs=paths)
        headers = [inspect_image(path, max_pixels=max_pixels) for path in paths]  # before the model loads
        runtime = load_runtime(backend, model, **backend_kwargs)
        codes = encode_files(runtime, paths, batch_size, size, headers, max_pixels)
        save_tokens(output, codes, paths, runtime.info)
        click.echo(f"encoded {len(paths)} images -> tokens {list(codes.shape)} in {output}")

    @group.command(help="Decode token ids (a .npz from encode, or a gsq-tokenize folder) to PNG images.")
    @click.option("--model", required=True, help=model_help)
    @click.option(
        "--tokens",
        required=True,
        type=click.Path(path_type=Path),
        help="A .npz written by encode, or a folder written by gsq-tokenize.",
    )
    @click.option("--output", required=True, type=click.Path(path_type=Path), help="Folder for the PNG images.")
    @click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
    @click.option("--ids", multiple=True, help="gsq-tokenize folder: only these sample ids (comma-separated, repeatable).")
    @click.option("--limit", type=click.IntRange(min=1), default=None, help="gsq-tokenize folder: at most N grids.")
    @click.option("--overwrite", is_flag=True, help="Replace existing images in the output folder.")
    @backend_options
    def decode(
        model: str,
        tokens: Path,
        output: Path,
        batch_size: int,
        ids: tuple[str, ...],
        limit: int | None,
        overwrite: bool,
        **backend_kwargs: Any,
    ) -> None:
        if tokens.is_dir():
            decode_token_folder(backend, model, tokens, output, batch_size, ids, limit, overwrite, backend_kwargs)
            return
        if ids or limit is not None:
            raise InputError(f"{tokens}: --ids and --limit choose samples of a gsq-tokenize folder, not of a .npz file")
        token_file = read_token_file(tokens)  # every array checked by header and content, codes not loaded
        targets = [output / f"{name}.png" for name in token_file.names]
        check_output_files(output, targets, overwrite, inputs=[tokens])
        runtime = load_runtime(backend, model, **backend_kwargs)
        try:
            check_tokens_for_model(token_file, runtime)
            factor = runtime.info.downsample_factor
            height, width = token_file.codes_shape[1:3]
            batch_size = min(batch_size, runtime.work_limit(height * factor, width * factor, "decode"))
            decode_to_files(runtime, token_file, targets, batch_size)
        except InputError as error:
            raise InputError(f"{tokens}: {error}") from None
        click.echo(f"decoded {len(targets)} images to {output}")

    return group


# -- encode ------------------------------------------------------------------------------------------
def encode_files(
    runtime: TokenizerRuntime,
    paths: list[Path],
    batch_size: int,
    size: tuple[int, int] | None,
    headers: list[ImageHeader] | None = None,
    max_pixels: int | None = None,
) -> np.ndarray:
    """Check every image's header first (size, decoding and working-memory budgets), then decode
    and encode in batches; int64 codes in input order."""
    factor = runtime.info.downsample_factor
    if size is not None and (size[0] % factor or size[1] % factor):
        raise InputError(f"--resize {size[0]}x{size[1]} is not a multiple of the downsampling factor {factor}")
    headers = headers or [inspect_image(path, max_pixels=max_pixels) for path in paths]
    check_image_headers(headers, factor, resize=size is not None)
    height, width = size or (headers[0].height, headers[0].width)
    try:
        batch_size = min(batch_size, runtime.work_limit(height, width, "encode"))
    except InputError as error:
        raise InputError(f"{'--resize ' + str(height) + 'x' + str(width) if size else headers[0].name}: {error}") from None
    chunks = []
    with _progress(len(paths), "encode") as bar:
        for start in range(0, len(paths), batch_size):
            batch = [read_image(path, size, max_pixels).pixels for path in paths[start : start + batch_size]]
            chunks.append(runtime.encode(np.stack(batch)))
            bar.update(len(batch))
    return np.concatenate(chunks)


def check_image_headers(headers: list[ImageHeader], factor: int, resize: bool) -> None:
    """Fail fast, before any decoding: mixed sizes, sizes not divisible by factor.

    Prints each image's notes (conversions, transparency, frames, orientation): nothing is changed silently.
    """
    first: tuple[str, tuple[int, int]] | None = None
    for header in headers if not resize else []:
        path, shape = header.name, (header.height, header.width)
        if first is None:
            first = (path, shape)
            if shape[0] % factor or shape[1] % factor:
                raise InputError(
                    f"{path}: size {shape[0]}x{shape[1]} is not a multiple of the downsampling factor {factor}; "
                    f"pass --resize HxW with multiples of {factor}"
                )
        elif shape != first[1]:
            raise InputError(
                f"{path}: size {shape[0]}x{shape[1]} differs from {first[0]} ({first[1][0]}x{first[1][1]}); "
                "pass --resize HxW to encode images of different sizes"
            )
    for header in headers:
        for note in header.notes:
            click.echo(f"note: {note}", err=True)


def save_tokens(output: Path, codes: np.ndarray, paths: list[Path], info: ModelInfo) -> None:
    """Write codes, paths and the model facts they depend on to a .npz, atomically."""
    arrays = {
        "codes": np.asarray(codes, dtype=np.int64),
        "paths": np.array([str(path) for path in paths]),
        "num_embed": np.int64(info.num_embed),
        "num_group": np.int64(info.num_group),
        "downsample_factor": np.int64(info.downsample_factor),
        "token_layout": np.array(info.token_layout),
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent)
    try:
        with os.fdopen(handle, "wb") as out:
            np.savez(out, **arrays)
        os.replace(tmp, output)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


# -- decode ------------------------------------------------------------------------------------------
def check_tokens_for_model(tokens: TokenFile, runtime: TokenizerRuntime) -> None:
    """Refuse, before decoding any, tokens made by a different model or ids / shapes this model cannot decode."""
    info = runtime.info
    for key in ("num_embed", "num_group", "downsample_factor", "token_layout"):
        if key in tokens.facts and tokens.facts[key] != getattr(info, key):
            raise InputError(f"tokens were made with {key}={tokens.facts[key]}, this model has {getattr(info, key)}")
    if tokens.count == 0:
        raise InputError("holds no token grids")
    first = np.zeros((1, *tokens.codes_shape[1:]), np.int64)  # the shape rules, on one grid of zeros
    check_codes(first, info.num_embed, info.num_group, info.token_layout, info.min_token_positions)
    if tokens.id_range is not None:  # the range of every id, from the reading pass
        low, high = tokens.id_range
        num_embed = info.num_embed
        if low < 0 or high >= num_embed:
            raise InputError(f"token id {low if low < 0 else high} is outside [0, {num_embed}) (codebook size {num_embed})")


def decode_to_files(runtime: TokenizerRuntime, tokens: TokenFile, targets: list[Path], batch_size: int) -> None:
    """Decode in batches and write one PNG per token grid (clipped to [-1, 1], 8-bit), atomically."""
    with _progress(len(targets), "decode") as bar:
        for start, codes in zip(range(0, len(targets), batch_size), tokens.batches(batch_size), strict=True):
            images = runtime.decode(codes)
            for image, target in zip(images, targets[start : start + batch_size], strict=True):
                write_image(target, image, overwrite=True)
            bar.update(images.shape[0])


def decode_token_folder(
    backend: str,
    model: str,
    folder: Path,
    output: Path,
    batch_size: int,
    ids: tuple[str, ...],
    limit: int | None,
    overwrite: bool,
    backend_kwargs: dict[str, Any],
) -> None:
    """Decode token grids of a gsq-tokenize output folder to OUTPUT/<id>.png (ids with '/' make subfolders)."""
    from .token_shards import read_manifest, read_tokens

    manifest = read_manifest(folder)
    wanted = [item.strip() for value in ids for item in value.split(",") if item.strip()] or None
    samples = list(read_tokens(folder, ids=wanted, limit=limit))
    if wanted is not None:
        missing = sorted(set(wanted) - {sample.id for sample in samples})
        if missing:
            raise InputError(f"{folder}: no token grid with id {missing[0]!r} ({len(missing)} of {len(wanted)} ids not found)")
    if not samples:
        raise InputError(f"{folder}: holds no token grids")
    targets = [output / f"{safe_relative_path(sample.id, folder)}.png" for sample in samples]
    check_output_files(output, targets, overwrite, inputs=[folder])
    runtime = load_runtime(backend, model, **backend_kwargs)
    info, made_with = runtime.info, manifest["tokenizer"]
    for key in ("num_embed", "num_group", "downsample_factor"):
        if int(made_with[key]) != getattr(info, key):
            raise InputError(f"{folder}: tokens were made with {key}={made_with[key]}, this model has {getattr(info, key)}")
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for index, sample in enumerate(samples):
        by_shape.setdefault(sample.codes.shape, []).append(index)
    factor = info.downsample_factor
    with _progress(len(samples), "decode") as bar:
        for indices in by_shape.values():
            height, width = samples[indices[0]].codes.shape[:2]
            try:
                step = min(batch_size, runtime.work_limit(height * factor, width * factor, "decode"))
            except InputError as error:
                raise InputError(f"{folder}: {samples[indices[0]].id}: {error}") from None
            for start in range(0, len(indices), step):
                chunk = indices[start : start + step]
                codes = np.stack([samples[i].codes for i in chunk]).astype(np.int64)
                try:
                    images = runtime.decode(codes)
                except InputError as error:
                    raise InputError(f"{folder}: {samples[chunk[0]].id}: {error}") from None
                for image, index in zip(images, chunk, strict=True):
                    write_image(targets[index], image, overwrite=True)
                bar.update(len(chunk))
    click.echo(f"decoded {len(samples)} token grids from {folder} to {output}")


def safe_relative_path(sample_id: str, folder: Path) -> str:
    """A sample id as a relative output path; ids that would leave the output folder are refused."""
    parts = sample_id.split("/")
    if not sample_id or sample_id.startswith("/") or any(part in ("", ".", "..") for part in parts):
        raise InputError(f"{folder}: sample id {sample_id!r} cannot name an output file (empty, absolute or '..' parts)")
    return sample_id


@contextmanager
def _progress(total: int, label: str) -> Iterator[Any]:
    """A tqdm bar on stderr above PROGRESS_MIN_IMAGES images; erased when the work fails."""
    from tqdm import tqdm

    bar = tqdm(total=total, desc=label, unit="img", disable=total <= PROGRESS_MIN_IMAGES, file=sys.stderr)
    try:
        yield bar
    except BaseException:
        bar.leave = False  # so the error message stands alone
        raise
    finally:
        bar.close()
