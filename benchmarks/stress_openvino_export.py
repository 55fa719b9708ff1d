"""Stress loop for the OpenVINO export hang of issue 11: the same export, many times, fresh processes.

    python -m benchmarks.stress_openvino_export --runs 20 [--ckpt default] [--precision fp32] \
        [--timeout 600] [--json out/stress_openvino.json]

Each run is `gsq-export --ckpt CKPT --target openvino --precision P` (validation included) in a new
process with CI, TF_BUILD and JENKINS_URL removed from its environment, so OpenVINO's telemetry
would be on as on a user's machine (CI=true turns it off and hid the hang). Every run records its
wall time, its exit status and how many times the process forked (an os.register_at_fork hook:
a fork from a background thread is what deadlocked OpenBLAS, so the expected count is 0). A run
past --timeout is killed (its process group) and counted as hung. Prints a table and one JSON
line; exits 1 when any run hung, failed or forked.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REPO_ROOT = Path(__file__).resolve().parents[1]
TELEMETRY_OFF_VARIABLES = ("CI", "TF_BUILD", "JENKINS_URL")  # what openvino_telemetry reads as "in CI"
FORK_MARK = "stress-forks:"

# gsq-export's entry point, with a hook that counts forks and reports them on stderr at exit.
WATCHED_EXPORT = f"""\
import atexit, os, sys, threading
forks = []
os.register_at_fork(before=lambda: forks.append(threading.current_thread().name))
atexit.register(lambda: print("{FORK_MARK}", len(forks), ",".join(forks), file=sys.stderr, flush=True))
sys.argv = ["gsq-export"] + sys.argv[1:]
from gsq_deploy.exporters.cli import main
main()
"""


def one_run(args: argparse.Namespace, out_dir: Path) -> dict[str, Any]:
    """One export in a fresh process group; its time, status and fork count."""
    env = {key: value for key, value in os.environ.items() if key not in TELEMETRY_OFF_VARIABLES}
    command = [sys.executable, "-c", WATCHED_EXPORT, "--ckpt", args.ckpt, "--target", "openvino"]
    command += ["--precision", args.precision, "--out", str(out_dir), "--overwrite"]
    start = time.perf_counter()
    process = subprocess.Popen(
        command, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        _, stderr = process.communicate(timeout=args.timeout)
        status = "ok" if process.returncode == 0 else "failed"
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # the group this run started, nothing else
        _, stderr = process.communicate()
        status = "hung"
    seconds = time.perf_counter() - start
    forks = next((line.split()[1] for line in stderr.splitlines() if line.startswith(FORK_MARK)), None)
    error = next((line for line in stderr.splitlines() if line.startswith("error:")), None)
    return {
        "status": status,
        "seconds": round(seconds, 2),
        "exit_status": process.returncode,
        "forks": None if forks is None else int(forks),
        "error": error,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.stress_openvino_export", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="exports in a row (each in a fresh process)")
    parser.add_argument("--ckpt", default="default", help="checkpoint path or name")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "int8"))
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds before a run counts as hung")
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be >= 1")
    from tqdm import tqdm

    runs = []
    with tempfile.TemporaryDirectory(prefix="gsq-stress-openvino-") as work:
        for index in tqdm(range(args.runs), desc="openvino export", unit="run", file=sys.stderr):
            runs.append(one_run(args, Path(work) / f"run-{index}"))
    seconds = [run["seconds"] for run in runs if run["status"] == "ok"]
    report = {
        "command": f"gsq-export --ckpt {args.ckpt} --target openvino --precision {args.precision}",
        "environment": f"{', '.join(TELEMETRY_OFF_VARIABLES)} unset (OpenVINO telemetry as on a user's machine)",
        "runs": len(runs),
        "completed": sum(run["status"] == "ok" for run in runs),
        "hung": sum(run["status"] == "hung" for run in runs),
        "failed": sum(run["status"] == "failed" for run in runs),
        "runs_that_forked": sum(bool(run["forks"]) for run in runs),
        "median_s": round(statistics.median(seconds), 2) if seconds else None,
        "max_s": max(seconds) if seconds else None,
        "load_average_1m": os.getloadavg()[0],
        "details": runs,
    }
    print(f"{'run':>4} {'status':>7} {'seconds':>8} {'forks':>6}")
    for index, run in enumerate(runs):
        print(f"{index:>4} {run['status']:>7} {run['seconds']:>8.1f} {str(run['forks']):>6}" + (f"  {run['error']}" if run["error"] else ""))
    line = json.dumps(report)
    print(line)
    if args.json:
        from benchmarks.measure import write_json

        write_json(args.json, report, overwrite=True)
    return 0 if report["completed"] == len(runs) and not report["runs_that_forked"] else 1


if __name__ == "__main__":
    sys.exit(main())
