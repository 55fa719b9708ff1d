"""`gsq-train` (or `python -m train.launch`): `accelerate launch` with the same arguments, whose failures
end with the training script's own `error:` line and exit status.

    gsq-train [accelerate launch options] train/main.py --config ... --output-dir ...
    gsq-train [accelerate launch options] -m gsq_deploy.train.main --config ...   (the wheel, no checkout)

`accelerate launch` itself turns any non-zero exit of the script into a launcher traceback
(subprocess.CalledProcessError for one process, torch.distributed's ChildFailedError report for
several) printed after the script's one-line error, and exits 1. The script cannot prevent that from
inside, so this runs accelerate's own launcher in-process and returns the script's exit status instead.
"""

from __future__ import annotations

import logging
import subprocess
import sys

from gsq_core.extras import missing_package_message


def main(argv: list[str] | None = None) -> int:
    """Parse accelerate launch's arguments, launch, and return the script's exit status."""
    try:
        from accelerate.commands.launch import launch_command, launch_command_parser
    except ImportError as missing:  # accelerate, or the torch it imports: one line naming the extra
        print(f"error: {missing_package_message(missing.name or 'accelerate', 'train', 'gsq-train')}", file=sys.stderr)
        return 2

    args = launch_command_parser().parse_args(argv)
    # torch.distributed's agent logs every worker failure with a stack-like report; the workers'
    # own error lines already say what went wrong.
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    try:
        launch_command(args)
    except subprocess.CalledProcessError as error:
        return error.returncode or 1
    except Exception as error:  # ChildFailedError (torch.distributed): the first failed worker's status
        failures = getattr(error, "failures", None)
        if not failures:
            raise
        first = min(failures.items(), key=lambda item: item[1].timestamp)[1]
        return first.exitcode if first.exitcode and first.exitcode > 0 else 1
    except KeyboardInterrupt:
        return 130
    return 0


def main_exit() -> None:
    """Console entry (`gsq-train`)."""
    sys.exit(main())


if __name__ == "__main__":
    main_exit()
