"""The planted-fault list (benchmarks/planted_faults.py) still applies to the code as it is.

Running the faults takes minutes (`python -m benchmarks.planted_faults`, docs/testing.md); this test
only keeps the list from rotting: every fault's original snippet occurs exactly once in its file and
its tests exist, so a refactoring that moves a snippet is noticed here, not at the next survey.
"""

from __future__ import annotations

from pathlib import Path

from benchmarks.planted_faults import FAULTS, Fault, apply_fault, check_faults, copy_repository


def test_every_planted_fault_still_applies():
    assert check_faults() == []
    assert len(FAULTS) >= 30


def test_a_fault_is_applied_to_a_copy_never_to_the_repository(tmp_path):
    repository = tmp_path / "repo"
    (repository / "pkg").mkdir(parents=True)
    (repository / "pkg" / "mod.py").write_text("value = 1\n")
    fault = Fault("two", "value is 2", "pkg/mod.py", "value = 1", "value = 2", ("tests/test_mod.py",))
    copy = tmp_path / "copy"
    (copy / "pkg").mkdir(parents=True)
    (copy / "pkg" / "mod.py").write_text((repository / "pkg" / "mod.py").read_text())
    apply_fault(copy, fault)
    assert (copy / "pkg" / "mod.py").read_text() == "value = 2\n"
    assert (repository / "pkg" / "mod.py").read_text() == "value = 1\n"
    assert check_faults(repository, (fault, fault))[0] == "two: listed twice"


def test_the_copy_holds_the_tracked_and_untracked_files(tmp_path):
    root = Path(__file__).resolve().parents[2]
    copy_repository(root, tmp_path)
    assert (tmp_path / "gsq_core" / "fidelity.py").read_bytes() == (root / "gsq_core" / "fidelity.py").read_bytes()
    assert (tmp_path / "tests" / "benchmarks" / "test_planted_faults.py").is_file()
    assert not (tmp_path / ".venv").exists() and not (tmp_path / ".git").exists()
