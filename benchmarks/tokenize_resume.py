"""What resuming costs: gsq-tokenize's finished-id filter against Ray Data's checkpointing.

    python benchmarks/tokenize_resume.py --out out/bench-resume [--ids 1281167] [--files 2000]

1. The finished-id filter at ImageNet scale: the time to read the ids of --ids committed rows (4,096
   per shard, as gsq-tokenize writes them) and the failed list, and to drop them from the input list.
2. Ray Data's CheckpointConfig on a small real pipeline (read --files small files, a trivial map,
   write Parquet), with and without checkpointing, fresh and with everything already done; on a
   local Ray instance of this machine's CPUs.
Prints a table and writes DIR/report.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np


def finished_id_filter(folder: Path, count: int) -> dict[str, float]:
    """Seconds to load `count` committed ids through OutputFolder and filter an input list with them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from gsq_dataset.output import OutputFolder

    folder.mkdir(parents=True)
    ids = [f"n{index // 1300:08d}/n{index // 1300:08d}_{index}.JPEG" for index in range(count)]
    tokens = pa.array([np.zeros(8, np.int16)] * 4096, pa.list_(pa.int16()))
    for start in range(0, count, 4096):
        chunk = ids[start : start + 4096]
        table = pa.table({"id": chunk, "label": pa.nulls(len(chunk), pa.int64()), "tokens": tokens[: len(chunk)]})
        pq.write_table(table, folder / f"shard-{start // 4096:05d}.parquet")
    (folder / "_manifest.json").write_text(json.dumps({"format": "gsq-tokens", "tokenizer": {}}))
    output = OutputFolder(folder)
    started = time.perf_counter()
    done = output.done_ids()
    loaded = time.perf_counter() - started
    inputs = ids + [f"new/{index}.JPEG" for index in range(1000)]
    started = time.perf_counter()
    todo = [item for item in inputs if item not in done]
    filtered = time.perf_counter() - started
    assert len(todo) == 1000
    return {"ids": count, "load_done_ids_s": round(loaded, 3), "filter_inputs_s": round(filtered, 3)}


def ray_checkpointing(root: Path, files: int) -> dict[str, float]:
    """Wall seconds of a read -> map -> write_parquet pipeline without and with CheckpointConfig."""
    os.environ.update({"RAY_AUTH_MODE": "disabled", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"})
    import ray
    import ray.data
    from ray.data.checkpoint import CheckpointConfig

    source = root / "files"
    source.mkdir(parents=True)
    for index in range(files):
        (source / f"{index:06d}.bin").write_bytes(os.urandom(2048))
    paths = sorted(str(p) for p in source.iterdir())
    temp_dir = tempfile.mkdtemp(prefix="gsq-bench-ray-")
    ray.init(address="local", _node_ip_address="127.0.0.1", include_dashboard=False, _temp_dir=temp_dir)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False

    def once(output: Path, checkpoint: Path | None) -> float:
        context.checkpoint_config = (
            CheckpointConfig(id_column="path", checkpoint_path=str(checkpoint), delete_checkpoint_on_success=False)
            if checkpoint is not None
            else None
        )
        started = time.perf_counter()
        dataset = ray.data.read_binary_files(paths, include_paths=True)
        dataset = dataset.map_batches(lambda batch: {"path": batch["path"], "size": np.array([len(b) for b in batch["bytes"]])})
        dataset.write_parquet(str(output))
        return round(time.perf_counter() - started, 2)

    try:
        once(root / "warm-up", None)
        result = {
            "files": files,
            "plain_s": once(root / "plain", None),
            "checkpointed_fresh_s": once(root / "checkpointed", root / "checkpoints"),
            "checkpointed_all_done_s": once(root / "checkpointed", root / "checkpoints"),
        }
    finally:
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/tokenize_resume.py", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--ids", type=int, default=1_281_167, help="committed ids (ImageNet-1k train: 1,281,167)")
    parser.add_argument("--files", type=int, default=2000, help="files for the Ray Data checkpointing pipeline")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    args.out = args.out.absolute()  # CheckpointConfig takes only absolute paths or URIs
    if args.out.exists():
        if not args.overwrite:
            print(f"error: {args.out}: already exists; pass --overwrite", file=sys.stderr)
            return 2
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True)
    report: dict[str, Any] = {"load_1m_at_start": round(os.getloadavg()[0], 2)}
    report["finished_id_filter"] = finished_id_filter(args.out / "ids", args.ids)
    report["ray_checkpointing"] = ray_checkpointing(args.out / "ray", args.files)
    report["load_1m_at_end"] = round(os.getloadavg()[0], 2)
    (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    ids, ray_result = report["finished_id_filter"], report["ray_checkpointing"]
    print(f"finished-id filter: {ids['ids']:,} committed ids loaded in {ids['load_done_ids_s']} s, inputs filtered in {ids['filter_inputs_s']} s")
    print(
        f"Ray Data pipeline over {ray_result['files']} files: plain {ray_result['plain_s']} s, "
        f"with CheckpointConfig {ray_result['checkpointed_fresh_s']} s fresh, "
        f"{ray_result['checkpointed_all_done_s']} s with everything done "
        f"(load {report['load_1m_at_start']} -> {report['load_1m_at_end']})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
