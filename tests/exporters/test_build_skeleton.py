"""The build skeleton (exporters.build): a new target is one module plus one line in TARGETS."""

from __future__ import annotations

import sys

import pytest
from tests.targets_support import eager

from gsq_deploy.exporters import TARGETS, ExportError
from gsq_deploy.exporters.build import ExportOptions, check_target, export
from gsq_deploy.exporters.precision import PrecisionPlan
from gsq_deploy.exporters.target_options import export_options, target_option_types

TOY_TARGET = '''
import shutil
from dataclasses import dataclass
from typing import ClassVar

from gsq_deploy.exporters import flag
from gsq_deploy.exporters.build import SourceRequest, Target
from gsq_deploy.exporters.precision import PrecisionPlan
from gsq_deploy.exporters.manifest import file_checksum


@dataclass(frozen=True)
class ToyOptions:
    OWNER: ClassVar[str] = "Toy"
    USE_WITH: ClassVar[str] = "--target toy"
    level: int = flag(1, "--toy-level", "toy: a level.", type=("int_range", 1))


def build(step):
    manifest = step.source.manifest_copy()
    manifest["files"] = {}
    for name, entry in step.source.graphs.items():
        shutil.copyfile(step.source.graph_path(name), step.staging / entry["file"])
        manifest["files"][entry["file"]] = file_checksum(step.staging / entry["file"])
    manifest["target"] = "toy"
    manifest["toy"] = {"level": step.options.options_of(ToyOptions).level}
    return manifest


TARGET = Target(
    name="toy",
    precisions=("fp32",),
    build=build,
    source=lambda options: SourceRequest("onnx", PrecisionPlan(), validate=True),
    option_types=(ToyOptions,),
)
'''


@pytest.fixture
def toy(tmp_path, monkeypatch):
    """A target written as a new module, registered with one line."""
    (tmp_path / "toy_target.py").write_text(TOY_TARGET)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(TARGETS, "toy", "toy_target:TARGET")
    yield sys.modules.get("toy_target") or __import__("toy_target")
    sys.modules.pop("toy_target", None)


def test_a_new_target_is_one_module_plus_one_line(toy, tmp_path):
    options = ExportOptions(graphs=("quantizer",), progress=False, target_options=(toy.ToyOptions(level=3),))
    manifest = export(eager("gsq_f8_magvit"), tmp_path / "out", "toy", options)
    assert manifest["target"] == "toy" and manifest["toy"] == {"level": 3}
    assert manifest["validation"]["passed"]  # carried from its validated ONNX source
    assert (tmp_path / "out" / "quantizer.onnx").is_file()
    assert toy.ToyOptions in target_option_types()  # its flag reaches gsq-export
    values = {"precision": "fp32", "toy_level": 2}
    assert export_options("toy", values)["target_options"] == (toy.ToyOptions(level=2),)
    with pytest.raises(ExportError, match="--toy-level is a Toy option; use it with --target toy"):
        export_options("onnx", values)
    with pytest.raises(ExportError, match="--precision fp16 is not available for --target toy"):
        check_target("toy", ExportOptions(precision=PrecisionPlan.uniform("fp16")))
