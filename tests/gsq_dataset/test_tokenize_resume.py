"""Resuming gsq-tokenize at every kill point of the commit (issue 18), on real files and real pyarrow.

A killed run leaves DST/_staging/<run>/ behind and the next run's OutputFolder.commit_staging
commits it. These tests stage one fixed layout -- shards an earlier run committed, staged shards
that repeat committed ids and each other's (a retried writer), a shard cut short, failure records
with a cut line and a worker's unrenamed temporary -- and SIGKILL a forked child doing
commit_staging at each step of the commit in turn: before and after every rename, with every
Parquet write half done, before and after the failed list, part-way through removing staging. The
commit is then rerun, and DST must hold what one uninterrupted commit of the same layout holds:
every id once, the same rows (tokens, label, grid size) in the same shards, the same failed list,
no staging left. What that is, is written out independently of the code (EXPECTED_*).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow", reason="gsq-tokenize needs pyarrow: pip install 'gsq-deploy[dataset]'")
import pyarrow.parquet as pq  # noqa: E402

from gsq_dataset import output  # noqa: E402
from gsq_dataset.output import MANIFEST_FORMAT, CommitResult, OutputError, OutputFolder  # noqa: E402
from gsq_dataset.tokens import token_schema  # noqa: E402

# -- the layout ----------------------------------------------------------------------------------------
COMMITTED = {"earlier-000.parquet": ["p0", "p1", "p2"]}  # committed by an earlier run
COMMITTED_FAILURES = {"f0": "f0: corrupt (an earlier run)"}
STAGED = {  # run folder -> shard name -> ids; sorted order is commit order
    "20260101-000000-aaaaaaaa": {
        "a-000.parquet": ["a0", "a1", "p1"],  # p1 is committed: rewritten without it
        "a-001.parquet": ["a2", "a3"],
        "a-002.parquet": ["a3", "a4"],  # a retried writer repeats a3: rewritten without it
        "a-003.parquet": ["a5", "a6"],  # cut short below: dropped, its rows are redone
    },
    "20260101-000001-bbbbbbbb": {
        "b-000.parquet": ["b0", "p2", "b1"],  # rewritten without p2
        "b-001.parquet": ["p0"],  # nothing new: not committed
        "b-002.parquet": ["b2", "b3"],  # cut short too
    },
}
CUT_SHARDS = {"a-003.parquet", "b-002.parquet"}
STAGED_FAILURES = {
    "20260101-000000-aaaaaaaa": {
        "x.jsonl": [("f1", "f1: truncated"), ("a2", "a2: failed once, tokenized on retry")],
        ".y.jsonl.tmp": [("f9", "f9: a worker killed before its rename")],
    },
    "20260101-000001-bbbbbbbb": {
        "z.jsonl": [("f2", "f2: no image bytes — é"), ("f0", "f0: listed again"), ("f1", "f1: listed by a later run")]
    },
}
EXPECTED_SHARDS = {
    "earlier-000.parquet": ["p0", "p1", "p2"],
    "a-000.parquet": ["a0", "a1"],
    "a-001.parquet": ["a2", "a3"],
    "a-002.parquet": ["a4"],
    "b-000.parquet": ["b0", "b1"],
}
EXPECTED_FAILURES = {"f0": "f0: corrupt (an earlier run)", "f1": "f1: truncated", "f2": "f2: no image bytes — é"}
EXPECTED_COMMIT = CommitResult(shards=4, rows=7, failed=2, dropped_partial=2, dropped_duplicates=4)


def token_row(sample_id: str) -> dict[str, Any]:
    """The row the tokenizer would have written for an id: tokens, label and grid size all depend on it."""
    seed = zlib.crc32(sample_id.encode())
    height, width = 2 + seed % 2, 2 + seed % 3
    tokens = np.random.default_rng(seed).integers(0, 1024, height * width * 4).astype(np.int16)
    label = None if seed % 4 == 0 else int(seed % 1000)
    return {"id": sample_id, "label": label, "tokens": tokens.tolist(), "token_height": height, "token_width": width}


def write_shard(path: Path, ids: list[str]) -> None:
    pq.write_table(pa.Table.from_pylist([token_row(i) for i in ids], schema=token_schema(1024)), path)


def failure_lines(entries: list[tuple[str, str]]) -> str:
    return "".join(json.dumps({"id": i, "reason": r}) + "\n" for i, r in entries)


def build_layout(dst: Path) -> None:
    """DST as a run killed before its commit leaves it, on top of an earlier run's committed output."""
    dst.mkdir(parents=True)
    (dst / "_manifest.json").write_text(json.dumps({"format": MANIFEST_FORMAT, "runs": []}))
    for name, ids in COMMITTED.items():
        write_shard(dst / name, ids)
    (dst / "_failed.jsonl").write_text(failure_lines(list(COMMITTED_FAILURES.items())))
    for run, shards in STAGED.items():
        (dst / "_staging" / run / "shards").mkdir(parents=True)
        (dst / "_staging" / run / "failed").mkdir()
        for name, ids in shards.items():
            path = dst / "_staging" / run / "shards" / name
            write_shard(path, ids)
            if name in CUT_SHARDS:  # a writer killed mid-file: no footer
                path.write_bytes(path.read_bytes()[: path.stat().st_size * 2 // 3])
        for name, entries in STAGED_FAILURES[run].items():
            text = failure_lines(entries) + ('{"id": "cut' if name.endswith(".jsonl") else "")
            (dst / "_staging" / run / "failed" / name).write_text(text)


def committed_state(dst: Path) -> dict[str, Any]:
    """What DST holds: the rows of every shard (in order), the failed list, whether staging is left."""
    shards = {path.name: pq.read_table(path).to_pylist() for path in OutputFolder(dst).shard_paths()}
    return {
        "shards": shards,
        "failures": OutputFolder(dst).failures(),
        "staging_left": (dst / "_staging").exists(),
        "stray_parquet": sorted(p.name for p in dst.glob("*.parquet") if p.name not in shards),
        "stray_temporary": sorted(p.name for p in dst.glob(".*.tmp")),  # a write killed before its rename
    }


EXPECTED_STATE = {
    "shards": {name: [token_row(i) for i in ids] for name, ids in EXPECTED_SHARDS.items()},
    "failures": EXPECTED_FAILURES,
    "staging_left": False,
    "stray_parquet": [],
    "stray_temporary": [],
}


def commit(dst: Path) -> CommitResult:
    folder = OutputFolder(dst)
    folder.open(overwrite=False)  # the lock of a killed child is free again
    try:
        return folder.commit_staging()
    finally:
        folder.close()


# -- the uninterrupted commit --------------------------------------------------------------------------
def test_uninterrupted_commit_keeps_every_id_once_with_its_own_row(tmp_path):
    build_layout(tmp_path / "dst")
    result = commit(tmp_path / "dst")
    assert result == EXPECTED_COMMIT
    state = committed_state(tmp_path / "dst")
    ids = [row["id"] for rows in state["shards"].values() for row in rows]
    assert sorted(ids) == sorted(set(ids)) == sorted(i for ids in EXPECTED_SHARDS.values() for i in ids)
    assert state == EXPECTED_STATE  # tokens, labels and grid sizes of each id's own row
    assert "no image bytes — é" in (tmp_path / "dst" / "_failed.jsonl").read_text(encoding="utf-8")  # written as is, not as \\u00e9
    folder = OutputFolder(tmp_path / "dst")
    assert folder.done_ids() == set(ids) | set(EXPECTED_FAILURES)
    assert folder.counts() == {"tokenized": 10, "shards": 5, "failed": 3}
    assert commit(tmp_path / "dst") == CommitResult()  # nothing staged: nothing to do
    assert committed_state(tmp_path / "dst") == EXPECTED_STATE


# -- killed at a chosen step ---------------------------------------------------------------------------
class KillAt:
    """Patches (in a forked child only) the file operations commit_staging makes, counting each as a
    step, and SIGKILLs the process at step `kill_at`, writing that step's name to `named` first."""

    def __init__(self, kill_at: int, named: Path):
        self.kill_at, self.named, self.steps = kill_at, named, 0

    def step(self, name: str, before_dying: Any = None) -> None:
        if self.steps == self.kill_at:
            if before_dying is not None:
                before_dying()
            self.named.write_text(name)
            os.kill(os.getpid(), signal.SIGKILL)
        self.steps += 1

    def install(self) -> None:
        replace, write_table, write_text, rmtree = os.replace, pq.write_table, output.write_text_atomically, shutil.rmtree

        def patched_replace(source: Any, target: Any) -> None:
            self.step(f"before renaming {Path(source).name} to {Path(target).name}")
            replace(source, target)
            self.step(f"after renaming {Path(source).name} to {Path(target).name}")

        def patched_write_table(table: pa.Table, where: Any, *args: Any, **kwargs: Any) -> None:
            self.step(f"before writing {Path(where).name}")
            write_table(table, where, *args, **kwargs)
            cut = lambda: os.truncate(where, os.path.getsize(where) // 2)  # noqa: E731
            self.step(f"with {Path(where).name} half written", before_dying=cut)

        def patched_write_text(path: Path, text: str) -> None:
            self.step(f"before writing {path.name}")
            write_text(path, text)
            self.step(f"after writing {path.name}")

        def patched_rmtree(path: Any, *args: Any, **kwargs: Any) -> None:
            self.step(f"before removing {Path(path).name}")
            for run in sorted(Path(path).iterdir()):
                rmtree(run)
                self.step(f"after removing {Path(path).name}/{run.name}")
            rmtree(path, *args, **kwargs)

        os.replace, pq.write_table, shutil.rmtree = patched_replace, patched_write_table, patched_rmtree
        output.write_text_atomically = patched_write_text


def commit_killed_at(dst: Path, kill_at: int) -> str | None:
    """commit_staging in a forked child SIGKILLed at step kill_at: the step's name, or None when the
    commit finished first (kill_at is past its last step)."""
    named = dst.parent / f"{dst.name}.step"
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            KillAt(kill_at, named).install()
            folder = OutputFolder(dst)
            folder.open(overwrite=False)
            folder.commit_staging()
            os._exit(0)
        except BaseException:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    if os.WIFEXITED(status):
        assert os.WEXITSTATUS(status) == 0, f"the child doing the commit failed (exit {os.WEXITSTATUS(status)})"
        return None
    assert os.WTERMSIG(status) == signal.SIGKILL
    return named.read_text()


def test_a_commit_killed_at_any_step_then_rerun_equals_the_uninterrupted_commit(tmp_path):
    steps: list[str] = []
    while True:
        dst = tmp_path / f"dst-{len(steps)}"
        build_layout(dst)
        step = commit_killed_at(dst, len(steps))
        if step is None:
            break
        steps.append(step)
        visible = {p.name for p in dst.iterdir() if not p.name.startswith((".", "_"))}  # what readers discover
        assert visible <= set(EXPECTED_SHARDS), f"killed {step}: {sorted(visible)}"
        commit(dst)
        assert committed_state(dst) == EXPECTED_STATE, f"killed {step}"
        shutil.rmtree(dst)
    assert committed_state(dst) == EXPECTED_STATE  # the child that was never killed
    # every kind of step was reached: the kill points are not all before the commit
    assert steps[0] == "before writing .a-000.parquet.dedup"
    for expected in (
        "with .a-000.parquet.dedup half written",
        "after renaming .a-000.parquet.dedup to a-000.parquet",
        "after renaming a-001.parquet to a-001.parquet",
        "before writing _failed.jsonl",
        "after writing _failed.jsonl",
        "after removing _staging/20260101-000000-aaaaaaaa",
    ):
        assert expected in steps, steps
    assert len(steps) == 21, steps


def test_a_rerun_killed_again_still_ends_with_the_uninterrupted_commit(tmp_path):
    dst = tmp_path / "dst"
    build_layout(dst)
    first = commit_killed_at(dst, 4)  # a-000 committed, a-001 not yet
    assert first == "before renaming a-001.parquet to a-001.parquet"
    assert [p.name for p in OutputFolder(dst).shard_paths()] == ["a-000.parquet", "earlier-000.parquet"]
    second = commit_killed_at(dst, 3)  # the rerun dies in its turn, a-002's rewrite half written
    assert second == "with .a-002.parquet.dedup half written"
    commit(dst)
    assert committed_state(dst) == EXPECTED_STATE


def test_a_killed_commit_leaves_the_lock_free_and_a_live_one_holds_it(tmp_path):
    dst = tmp_path / "dst"
    build_layout(dst)
    assert commit_killed_at(dst, 0) is not None
    live = OutputFolder(dst)
    live.open(overwrite=False)
    with pytest.raises(OutputError, match="another gsq-tokenize run"):
        OutputFolder(dst).open(overwrite=False)
    live.close()
