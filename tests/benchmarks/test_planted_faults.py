"""The planted-fault list (benchmarks/planted_faults.py) still applies to the code as it is.

Running the faults takes minutes (`python -m benchmarks.planted_faults`, docs/testing.md); this test
only keeps the list from rotting: every fault's original snippet occurs exactly once in its file and
its tests exist, so a refactoring that moves a snippet is noticed here, not at the next survey.
"""

from __future__ import annotations

import os
import subprocess
import sys
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


def test_the_copy_imports_its_own_folders_by_their_installed_names(tmp_path):
    """A fault planted in the copy's runtimes/ must reach `import gsq_deploy.runtimes` in the copy's
    test processes, whatever checkout an editable install points at."""
    root = Path(__file__).resolve().parents[2]
    copy_repository(root, tmp_path)
    code = "import gsq_deploy.runtimes, gsq_deploy.exporters, gsq_deploy.train as t; print(t.__file__)"
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()).resolve() == (tmp_path / "train" / "__init__.py").resolve()
