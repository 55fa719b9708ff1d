"""Store a native checkpoint with fp16 weights (half the size); gsq_core loads it back as fp32.

    python -m train.pack_model runs/default/model.safetensors gsq_core/assets/default.safetensors

The packed file *is* the model: measure it (python -m train.evaluate --ckpt PACKED ...), since
rounding the weights to fp16 changes reconstructions slightly. Token lookups still run in fp32.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gsq_core.errors import GSQError


def pack(source: str, target: Path, overwrite: bool = False) -> Path:
    """Load source, round its weights to fp16, write target atomically."""
    from gsq_core import load_tokenizer

    model = load_tokenizer(source).half()
    return model.save(target, overwrite=overwrite)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="native .safetensors checkpoint (fp32)")
    parser.add_argument("target", type=Path, help="where to write the fp16 copy")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing target")
    args = parser.parse_args(argv)
    try:
        path = pack(args.source, args.target, args.overwrite)
    except (GSQError, FileExistsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
