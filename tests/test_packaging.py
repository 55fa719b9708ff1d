"""The base install is the torch-free runtime; commands that need an extra say which in one line.

Torch is installed on the test machine, so "not installed" is made real inside a subprocess: a
meta-path finder that answers every import of torch (and its submodules) with ModuleNotFoundError,
the way a Python without torch does.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib

import numpy as np
from tests.conftest import FLEXGEN, REPO, assert_one_line_error
from tests.targets_support import fp32_onnx

# The runtime and only the runtime (issue 11): no torch, accelerate, matplotlib, scikit-image...
BASE_REQUIREMENTS = {"numpy", "onnxruntime", "pillow", "click", "tqdm", "rich"}

WITHOUT_TORCH = """\
import runpy, sys
class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, NoTorch())
sys.argv = [sys.argv[1]] + sys.argv[2:]
if sys.argv[0].endswith(".py"):
    runpy.run_path(sys.argv[0], run_name="__main__")
else:
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""


def run_without_torch(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    """`python -m MODULE args` (or `python SCRIPT.py args`) in a process where torch cannot be imported."""
    command = [sys.executable, "-c", WITHOUT_TORCH, *args]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def test_base_install_requires_only_the_runtime():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    names = {_requirement_name(requirement) for requirement in project["dependencies"]}
    assert names == BASE_REQUIREMENTS
    extras = project["optional-dependencies"]
    assert {"torch", "train", "bench", "openvino", "gpu", "trt", "fp16", "dataset", "dev"} <= set(extras)
    assert "torch" in {_requirement_name(r) for r in extras["torch"]}
    dev = " ".join(extras["dev"])
    for extra in ("torch", "train", "bench", "openvino", "fp16", "dataset"):
        assert extra in dev, f"the dev extra (the test suite's) does not pull in [{extra}]"


def _requirement_name(requirement: str) -> str:
    name = requirement
    for stop in "<>=![; ":
        name = name.split(stop)[0]
    return name.strip().lower()


def test_onnx_runtime_cli_encodes_and_decodes_without_torch(tmp_path):
    artifact = fp32_onnx("gsq_f8_magvit")
    images = FLEXGEN / "gsq_f8_magvit_images"
    tokens = tmp_path / "tokens.npz"
    result = run_without_torch(
        "runtimes.onnx", "encode", "--model", str(artifact), "--output", str(tokens), str(images / "64x64_0.png"),
        str(images / "64x64_1.png"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    with np.load(tokens) as data:
        assert data["codes"].shape == (2, 8, 8, 4) and data["codes"].dtype == np.int64
    result = run_without_torch("runtimes.onnx", "decode", "--model", str(artifact), "--tokens", str(tokens),
                               "--output", str(tmp_path / "recon"))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "recon").iterdir()) == ["64x64_0.png", "64x64_1.png"]


def test_the_blocker_really_hides_torch():
    result = run_without_torch("runtimes.torch", "encode", "--help")  # --help loads nothing: it works
    assert result.returncode == 0, result.stderr
    check = subprocess.run(
        [sys.executable, "-c", WITHOUT_TORCH.replace("sys.argv = [", "import torch\nsys.argv = ["), "x"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert check.returncode != 0 and "No module named 'torch'" in check.stderr


def test_commands_that_need_torch_say_so_in_one_line(tmp_path):
    checkpoint = str(FLEXGEN / "gsq_f8_magvit.pt")
    image = str(FLEXGEN / "gsq_f8_magvit_images" / "64x64_0.png")
    hint = "pip install 'gsq-deploy[torch]'"
    result = run_without_torch("exporters", "--ckpt", checkpoint, "--out", str(tmp_path / "onnx"))
    assert_one_line_error(result, "gsq-export needs torch", hint)
    assert not (tmp_path / "onnx").exists()
    assert_one_line_error(run_without_torch("gsq_core", "info", checkpoint), "needs torch", hint)
    result = run_without_torch("runtimes.torch", "encode", "--model", checkpoint, "--output", str(tmp_path / "t.npz"),
                               image)  # fmt: skip
    assert_one_line_error(result, "the torch runtime needs torch", hint)
    result = run_without_torch(
        "benchmarks/compare.py", "--ckpt", checkpoint, "--images", image, "--out", str(tmp_path / "cmp")
    )
    assert_one_line_error(result, "benchmarks/compare.py needs torch", "pip install 'gsq-deploy[bench]'")


def test_gsq_train_without_accelerate_or_torch_says_so_in_one_line():
    result = run_without_torch("gsq_deploy.train.launch", "train/main.py", "--config", "train/configs/smoke.yaml")
    assert_one_line_error(result, "gsq-train needs torch", "pip install 'gsq-deploy[train]'")
    assert result.returncode == 2


def test_gsq_export_help_works_without_torch():
    result = run_without_torch("exporters", "--help")
    assert result.returncode == 0, result.stderr
    assert "--target" in result.stdout
