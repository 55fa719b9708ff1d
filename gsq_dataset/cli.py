"""gsq-tokenize: tokenize a dataset into token shards, in this process or on Ray Data (a cluster), resumable.

    gsq-tokenize --model default --input photos/ --output tokens/
    gsq-tokenize --backend onnx --model out/default-onnx --input 'shards/train-{0000..0127}.tar' \\
                 --output tokens/ --size 256 --workers 2 --threads 1
    gsq-tokenize --backend torch --device cuda --model ckpt.pt --input imagenet/train --output tok/ \\
                 --ray-address 10.0.0.1:6379

Options of the backend (`--device`, `--provider`, `--inference-precision`) are those of
`python -m runtimes.<backend>`, passed through to every worker's runtime. Running the same command
again after a kill finishes the work without redoing finished samples.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

import click

from gsq_core.console import run_command
from gsq_core.errors import GSQError, InputError
from gsq_core.extras import missing_package_message
from gsq_deploy.runtimes import backend_choice, command, runtime_class

PROG = "gsq-tokenize"


@click.command(
    name=PROG,
    help=__doc__.split("\n\n")[0],
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    epilog=f"Backend options (see {command('<backend>')} encode --help): torch --device --config --ema/--no-ema; "
    "onnx --provider; openvino --device --inference-precision; trt --device.",
)
@click.option("--model", required=True, help="A checkpoint or 'default' (torch), an exported model directory otherwise.")
@click.option(
    "--input",
    "inputs",
    required=True,
    multiple=True,
    help="A folder (images, .tar shards or .parquet files), files, or globs / {000..099} ranges; repeatable.",
)
@click.option("--output", required=True, type=click.Path(path_type=Path), help="Folder for the token shards.")
@click.option("--backend", type=backend_choice(), default="torch", show_default=True, help="The runtime that tokenizes.")
@click.option("--size", default="256", show_default=True, help="S: the ADM centre crop to SxS; 'native': images as they are.")
@click.option("--batch-size", type=int, default=32, show_default=True, help="Images per tokenizer call.")
@click.option("--workers", type=int, default=None, help="Tokenizer actors of the ray executor [default: two per CPU node, or one per GPU].")
@click.option("--threads", type=int, default=None, help="Runtime threads per worker (CPU backends) [default: node cores / workers per node].")
@click.option("--ray-address", default=None, help="Join this Ray cluster (HOST:PORT) [default: RAY_ADDRESS, else a local instance].")
@click.option("--num-cpus", type=int, default=None, help="CPUs of the local Ray instance [default: all].")
@click.option("--input-format", default="auto", show_default=True, help="auto, folder, webdataset or parquet.")
@click.option("--rows-per-shard", type=int, default=4096, show_default=True, help="Rows per Parquet shard (at least).")
@click.option("--connect-timeout", type=float, default=30.0, show_default=True, help="Seconds to wait for --ray-address.")
@click.option(
    "--executor",
    default="auto",
    show_default=True,
    help="local (the stages in this process), ray (Ray Data), or auto: ray with --ray-address / RAY_ADDRESS or a GPU backend, else local.",
)
@click.option("--format", "output_format", default="ours", show_default=True, help="ours, flexgen (flex_gen pretoken.py's Parquet) or jsonl (TiTok/RAR).")
@click.option("--decoders", type=int, default=None, help="Decode + crop threads of the local executor [default: cores - 1, at least 1].")
@click.option("--no-progress", is_flag=True, help="No progress line.")
@click.option("--overwrite", is_flag=True, help="Replace the tokens already in --output.")
@click.pass_context
def main_command(ctx: click.Context, **options: Any) -> None:
    from .job import TokenizeConfig, run_tokenize

    backend = options["backend"]
    config = TokenizeConfig(
        model=options["model"],
        inputs=list(options["inputs"]),
        output=options["output"],
        backend=backend,
        size=options["size"],
        batch_size=options["batch_size"],
        workers=options["workers"],
        threads=options["threads"],
        ray_address=options["ray_address"],
        num_cpus=options["num_cpus"],
        overwrite=options["overwrite"],
        input_format=options["input_format"],
        backend_options=backend_options(backend, ctx.args),
        rows_per_shard=options["rows_per_shard"],
        connect_timeout_s=options["connect_timeout"],
        progress=not options["no_progress"],
        executor=options["executor"],
        output_format=options["output_format"],
        decoders=options["decoders"],
    )
    for name in ("workers", "threads", "num_cpus", "rows_per_shard", "decoders"):
        value = getattr(config, name)
        if value is not None and value < 1:
            raise InputError(f"--{name.replace('_', '-')} {value} must be >= 1")
    summary = run_tokenize(config)
    for line in summary.lines():
        click.echo(line)


def backend_options(backend: str, arguments: list[str]) -> dict[str, Any]:
    """Parse the arguments gsq-tokenize does not know with the backend's own CLI options."""
    module = importlib.import_module(runtime_class(backend).__module__)
    parser = click.Command(f"--backend {backend}", callback=lambda **kwargs: kwargs)
    for option in module.cli_options():
        parser = option(parser)
    parser.params = [param for param in parser.params if param.name != "threads"]  # gsq-tokenize's --threads
    try:
        parsed = parser.main(list(arguments), standalone_mode=False)
    except click.NoSuchOption as error:
        raise InputError(f"{error.option_name} is not an option of {PROG} or of its {backend} backend") from None
    except click.UsageError as error:
        raise InputError(f"{error.format_message()} (options of the {backend} backend)") from None
    return dict(parsed)


def _installed(module: str) -> bool:
    """Whether a top-level module can be imported, without importing it (Ray reads its settings on import)."""
    import importlib.util

    return importlib.util.find_spec(module) is not None


def main() -> None:
    """Console entry point (`gsq-tokenize`, `python -m gsq_dataset`)."""
    missing = [name for name in ("ray", "pyarrow", "pandas") if not _installed(name)]  # ray[data]
    if missing:
        click.echo(f"error: {missing_package_message(missing[0], 'dataset', PROG)}", err=True)
        sys.exit(2)
    try:
        run_command(main_command, PROG)
    except click.UsageError as error:  # pragma: no cover - run_command shows click's own errors
        click.echo(f"error: {error.format_message()}", err=True)
        sys.exit(2)
    except GSQError as error:  # pragma: no cover
        click.echo(f"error: {error}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
