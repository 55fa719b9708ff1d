"""The names gsq-deploy installs (README, "Installed names"), and the same names in a checkout.

The wheel holds three top-level names, gsq_core, gsq_dataset and gsq_deploy; the repository's
runtimes/, exporters/ and train/ install as gsq_deploy.runtimes, ... . The wheel is built from a copy
of the sources, installed into a real virtualenv and run from a user's project that has modules of
its own named runtimes, exporters, train and benchmarks: both sets must work side by side.
In a checkout, gsq_deploy.runtimes is the top-level runtimes package itself (gsq_deploy.checkout).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from tests.conftest import FLEXGEN, REPO, run_module
from tests.targets_support import fp32_onnx

INSTALLED_TOP_LEVEL = {"gsq_core", "gsq_dataset", "gsq_deploy"}
WHEEL_SOURCES = ("gsq_core", "gsq_dataset", "gsq_deploy", "runtimes", "exporters", "train", "benchmarks", "tests")
USER_MODULES = ("runtimes", "exporters", "train", "benchmarks")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built from a copy of the sources (the checkout stays clean)."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "fixtures", "*.egg-info")
    for folder in WHEEL_SOURCES:
        shutil.copytree(REPO / folder, source / folder, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(root / "dist"),
         str(source)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr
    (built,) = (root / "dist").glob("gsq_deploy-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A virtualenv with the wheel installed (its requirements come from this interpreter's packages)."""
    folder = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(folder)], check=True, timeout=300)
    install = subprocess.run(
        [str(folder / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr
    return folder


@pytest.fixture
def user_project(tmp_path) -> Path:
    """A user's project folder with its own modules named like the repository's folders."""
    (tmp_path / "exporters").mkdir()
    (tmp_path / "exporters" / "__init__.py").write_text("OWNER = 'user'\n")
    for name in ("runtimes", "train", "benchmarks"):
        (tmp_path / f"{name}.py").write_text("OWNER = 'user'\n")
    return tmp_path


def run_in(venv: Path, cwd: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """The venv's python with `args`, in `cwd`, with no PYTHONPATH pointing at the checkout."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    return subprocess.run([str(venv / "bin" / "python"), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


def test_the_wheel_installs_only_gsq_core_gsq_dataset_and_gsq_deploy(wheel):
    with zipfile.ZipFile(wheel) as archive:
        (record,) = [name for name in archive.namelist() if name.endswith(".dist-info/RECORD")]
        files = [line.split(",")[0] for line in archive.read(record).decode().splitlines() if line]
        entry_points = archive.read(record.replace("RECORD", "entry_points.txt")).decode()
    top_level = {path.split("/")[0] for path in files if ".dist-info/" not in path}
    assert top_level == INSTALLED_TOP_LEVEL
    for expected in (
        "gsq_deploy/__init__.py",
        "gsq_deploy/runtimes/onnx.py",
        "gsq_deploy/runtimes/__main__.py",
        "gsq_deploy/exporters/cli.py",
        "gsq_deploy/train/main.py",
        "gsq_deploy/train/configs/smoke.yaml",
        "gsq_core/assets/default.safetensors",
    ):
        assert expected in files, f"the wheel lacks {expected}"
    assert not [path for path in files if path.startswith(("gsq_deploy/benchmarks", "gsq_deploy/tests"))]
    scripts = dict(line.replace(" ", "").split("=") for line in entry_points.splitlines() if "=" in line)
    assert scripts == {
        "gsq-export": "gsq_deploy.exporters.cli:main",
        "gsq-train": "gsq_deploy.train.launch:main_exit",
        "gsq-tokenize": "gsq_dataset.cli:main",
    }


def test_installed_names_and_a_users_own_modules_work_side_by_side(venv, user_project):
    code = """
import json, sys
import runtimes, exporters, train, benchmarks
import gsq_deploy.runtimes.onnx, gsq_deploy.exporters.cli, gsq_deploy.train.checkpointing
from gsq_deploy.runtimes import load_runtime
print(json.dumps({
    "owners": [m.OWNER for m in (runtimes, exporters, train, benchmarks)],
    "name": gsq_deploy.runtimes.onnx.__name__,
    "file": gsq_deploy.runtimes.onnx.__file__,
    "aliases": "gsq_deploy.checkout" in sys.modules,
}))
"""
    result = run_in(venv, user_project, "-c", code)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["owners"] == ["user"] * 4
    assert report["name"] == "gsq_deploy.runtimes.onnx"
    assert Path(report["file"]).is_relative_to(venv)
    assert report["aliases"] is False  # no checkout hook in an installed wheel


def test_the_installed_commands_run_in_a_users_project(venv, user_project, tmp_path):
    """python -m gsq_deploy.runtimes.onnx encodes (the same tokens as the checkout's runtime), and the
    console scripts start, in a folder whose own runtimes.py and exporters/ come first on sys.path."""
    artifact = fp32_onnx("gsq_f8_magvit")
    image = FLEXGEN / "gsq_f8_magvit_images" / "64x64_0.png"
    tokens = tmp_path / "tokens.npz"
    result = run_in(venv, user_project, "-m", "gsq_deploy.runtimes.onnx", "encode", "--model", str(artifact),
                    "--output", str(tokens), str(image))  # fmt: skip
    assert result.returncode == 0, result.stderr
    checkout = run_module("runtimes.onnx", "encode", "--model", str(artifact), "--output",
                          str(tmp_path / "checkout.npz"), str(image))  # fmt: skip
    assert checkout.returncode == 0, checkout.stderr
    with np.load(tokens) as installed, np.load(tmp_path / "checkout.npz") as reference:
        assert installed["codes"].shape == (1, 8, 8, 4)
        np.testing.assert_array_equal(installed["codes"], reference["codes"])
    for script in ("gsq-export", "gsq-tokenize"):
        started = subprocess.run([str(venv / "bin" / script), "--help"], cwd=user_project, capture_output=True,
                                 text=True, timeout=300)  # fmt: skip
        assert started.returncode == 0, f"{script}: {started.stderr}"
    result = run_in(venv, user_project, "-m", "gsq_deploy.train.main", "--help")
    assert result.returncode == 0, result.stderr
    assert "--config" in result.stdout


def test_in_a_checkout_gsq_deploy_names_are_the_top_level_folders():
    """One module object under both names: no second OnnxRuntime class, no second backend table."""
    import gsq_deploy.exporters.lookup_graph
    import gsq_deploy.runtimes.onnx
    import gsq_deploy.train.checkpointing

    import exporters.lookup_graph
    import runtimes.onnx
    import train.checkpointing

    assert gsq_deploy.runtimes.onnx is runtimes.onnx
    assert gsq_deploy.runtimes.onnx.OnnxRuntime is runtimes.onnx.OnnxRuntime
    assert gsq_deploy.exporters.lookup_graph is exporters.lookup_graph
    assert gsq_deploy.train.checkpointing is train.checkpointing
    # mutmut names a mutant after its file's path: the module's own name must be that path
    assert runtimes.onnx.OnnxRuntime.__module__ == "runtimes.onnx"
    assert Path(runtimes.onnx.__file__) == REPO / "runtimes" / "onnx.py"
    assert importlib.util.find_spec("gsq_deploy.runtimes.no_such_backend") is None
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("gsq_deploy.runtimes.no_such_backend")


def checkout_python(cwd: Path, args: list[str]) -> subprocess.CompletedProcess:
    """A fresh interpreter in `cwd` that finds the checkout through PYTHONPATH (its first entry)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_in_a_checkout_the_installed_names_work_from_any_folder(tmp_path):
    result = checkout_python(tmp_path, ["-m", "gsq_deploy.runtimes", "--backend", "onnx", "encode", "--help"])
    assert result.returncode == 0, result.stderr
    assert "python -m gsq_deploy.runtimes --backend onnx encode" in result.stdout
    result = checkout_python(tmp_path, ["-m", "gsq_deploy.runtimes.onnx", "encode", "--help"])
    assert result.returncode == 0, result.stderr
    assert "Usage: python -m gsq_deploy.runtimes.onnx encode" in result.stdout
    result = checkout_python(tmp_path, ["-m", "gsq_deploy.train.main", "--help"])
    assert result.returncode == 0, result.stderr
    assert "usage: main.py" in result.stdout


def test_in_a_checkout_a_users_module_of_the_same_name_is_refused_by_an_import_error_naming_both(user_project):
    """The checkout's aliases cannot serve gsq_deploy.train once another `train` is loaded: ImportError
    naming both, not the user's module under our name."""
    result = checkout_python(user_project, ["-c", "import train\nimport gsq_deploy.train"])
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: gsq_deploy.train is the checkout's")
    assert str(user_project / "train.py") in last and "install gsq-deploy as a wheel" in last
