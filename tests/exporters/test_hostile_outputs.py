"""Hostile outputs: every writer checks its outputs before loading a model, an output is never an
input, exports clean up on SIGTERM / SIGHUP as on Ctrl-C and two exports into one --out cannot both
succeed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from tests.hostile_support import REPO, assert_one_line_error, files_under, photo, run_cli, save


def export_args(out: Path, *extra: str) -> list[str]:
    return ["-m", "exporters", "--ckpt", "default", "--out", str(out), "--graphs", "tokenize", *extra]


def default_hangup() -> None:
    """In the child: SIGHUP back to its default, so a suite started under nohup (SIGHUP ignored, and
    inherited) still tests the export's handler rather than the launcher's choice."""
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


def start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=default_hangup,
    )  # fmt: skip


def wait_for(predicate, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".out."))


@pytest.mark.parametrize(
    "target, signum, stage",
    [("onnx", signal.SIGTERM, ".partial-"), ("onnx", signal.SIGHUP, ".partial-"), ("openvino", signal.SIGTERM, ".source-")],
    ids=["sigterm-staging", "sighup-staging", "sigterm-source"],
)
def test_termination_during_an_export_removes_what_it_staged(tmp_path, target, signum, stage):
    pytest.importorskip("openvino") if target == "openvino" else None
    process = start(export_args(tmp_path / "out", "--target", target))
    try:
        wait_for(lambda: any(p.name.startswith(f".out{stage}") for p in tmp_path.iterdir()) or process.poll() is not None)
        assert process.poll() is None, process.communicate()
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 128 + signum, stderr
    assert "Traceback" not in stderr
    assert leftovers(tmp_path) == [] and not (tmp_path / "out").exists()


def test_two_exports_into_one_new_out_cannot_both_succeed(tmp_path):
    out = tmp_path / "out"
    racers = [start(export_args(out)) for _ in range(2)]  # both pass the early check: out does not exist yet
    results = [(racer.wait(timeout=300), racer.communicate()[1]) for racer in racers]
    assert sorted(code for code, _ in results) == [0, 2], results  # exactly one wins; before, both exited 0
    loser = next(stderr for code, stderr in results if code)
    assert loser.strip().startswith("error: ") and ("another export" in loser or "--overwrite" in loser), loser
    assert (out / "manifest.json").is_file() and (out / "tokenize.onnx").is_file()
    assert leftovers(tmp_path) == []


def test_an_export_into_a_locked_out_fails_at_once(tmp_path):
    from gsq_deploy.exporters.staging import destination_lock

    out = tmp_path / "out"
    with destination_lock(out):  # another export is staging into out right now
        result = run_cli(export_args(out))
    assert_one_line_error(result, str(out), "another export")
    assert not out.exists() and leftovers(tmp_path) == []


def test_leftovers_of_a_killed_export_are_removed_by_the_next(tmp_path):
    killed = tmp_path / ".out.partial-abc123"
    killed.mkdir()
    (killed / "tokenize.onnx").write_bytes(b"half")
    result = run_cli(export_args(tmp_path / "out", "--no-validate"))
    assert result.returncode == 0, result.stderr
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("where", ["proc", "under-a-file", "existing-file"])
def test_export_refuses_an_unwritable_out_before_loading_the_model(tmp_path, where):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    out = {"proc": Path("/proc/gsq-out"), "under-a-file": a_file / "out", "existing-file": a_file}[where]
    result = run_cli(export_args(out))
    assert_one_line_error(result, str(out))  # one line: the model was never loaded (no stage line)
    assert a_file.read_text() == "x"


def test_runtime_cli_outputs_are_checked_before_the_model_loads(tmp_path):
    image = save(tmp_path / "x.png", photo(32, 32))
    folder = tmp_path / "a-folder"
    folder.mkdir()
    encode = ["-m", "runtimes.torch", "encode", "--model", "default"]
    for output, fragment in ((folder, "existing folder"), (Path("/proc/t.npz"), "cannot write"),
                             (tmp_path / "file" / "t.npz", "is a file")):
        if output.parent.name == "file":
            output.parent.write_text("x")
        assert_one_line_error(run_cli([*encode, "--output", str(output), str(image)]), fragment)
    before = image.read_bytes()
    result = run_cli([*encode, "--overwrite", "--output", str(image), str(image)])
    assert_one_line_error(result, "is also an input")
    assert image.read_bytes() == before
    tokens = tmp_path / "t.npz"
    np.savez(tokens, codes=np.zeros((1, 4, 4, 32), np.int64))
    result = run_cli(["-m", "runtimes.torch", "decode", "--model", "default", "--tokens", str(tokens),
                      "--output", str(tmp_path / "file")])
    assert_one_line_error(result, "not a folder")


def test_compare_never_replaces_a_report_without_overwrite(tmp_path):
    image = save(tmp_path / "x.png", photo(32, 32))
    out = tmp_path / "cmp"
    out.mkdir()
    (out / "report.md").write_text("my notes")  # report.json absent: it used to be replaced anyway
    result = run_cli(["benchmarks/compare.py", "--ckpt", "default", "--images", str(image), "--backends", "torch",
                      "--out", str(out), "--no-progress"])
    assert_one_line_error(result, "report.md", "--overwrite")
    assert (out / "report.md").read_text() == "my notes" and files_under(out) == {"report.md"}
    result = run_cli(["benchmarks/compare.py", "--ckpt", "default", "--images", str(image), "--out", "/proc/cmp"])
    assert_one_line_error(result, "/proc/cmp")


def test_evaluate_checks_its_json_before_loading_the_model(tmp_path):
    image = save(tmp_path / "x.png", photo(64, 64))
    existing = tmp_path / "report.json"
    existing.write_text("{}")
    for target, fragment in ((Path("/proc/report.json"), "cannot write"), (existing, "--overwrite")):
        result = run_cli(["-m", "train.evaluate", "--size", "32", "--json", str(target), str(image)])
        assert_one_line_error(result, str(target), fragment)
    assert existing.read_text() == "{}"
