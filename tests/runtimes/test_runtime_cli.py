"""The runtime CLI (`python -m runtimes.onnx encode|decode`) on real files, good and bad.

Every bad input must end in exactly one line on stderr that names the file and the problem, a
non-zero exit status and no traceback.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tests.conftest import FLEXGEN, REPO, assert_one_line_error, expected_vectors, run_module
from PIL import Image

from gsq_deploy.exporters.onnx import export_onnx
from gsq_core import load_tokenizer
from gsq_deploy.runtimes import load_runtime
from gsq_deploy.runtimes.artifacts import ArtifactError, BackendUnavailableError

IMAGES = FLEXGEN / "gsq_f8_magvit_images"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """gsq_f8_magvit exported once (fused graphs only) for the whole module."""
    out = tmp_path_factory.mktemp("runtime") / "magvit"
    model = load_tokenizer(FLEXGEN / "gsq_f8_magvit.pt")
    export_onnx(model, out, graphs=("tokenize", "detokenize"), validate=False, progress=False)
    return out


def cli(*args: str) -> subprocess.CompletedProcess:
    return run_module("runtimes.onnx", *args, timeout=120)


def write_png(path: Path, array: np.ndarray) -> Path:
    Image.fromarray(array).save(path)
    return path


# -- good input ----------------------------------------------------------------------------------------
def test_encode_then_decode_keeps_input_order(model_dir, tmp_path):
    files = [IMAGES / "64x64_2.png", IMAGES / "64x64_0.png", IMAGES / "64x64_1.png"]
    result = cli("encode", "--model", str(model_dir), "--output", str(tmp_path / "t.npz"), *map(str, files))
    assert result.returncode == 0, result.stderr
    with np.load(tmp_path / "t.npz") as tokens:
        codes, paths = tokens["codes"], list(tokens["paths"])
    assert paths == [str(f) for f in files]
    assert codes.dtype == np.int64 and codes.shape == (3, 8, 8, 4)
    expected = expected_vectors("gsq_f8_magvit")["codes_64x64"][[2, 0, 1]]
    np.testing.assert_array_equal(codes, expected)

    result = cli(
        "decode", "--model", str(model_dir), "--tokens", str(tmp_path / "t.npz"), "--output", str(tmp_path / "out")
    )
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["64x64_0.png", "64x64_1.png", "64x64_2.png"]
    runtime = load_runtime("onnx", model_dir)
    for index, file in enumerate(files):
        decoded = np.asarray(Image.open(tmp_path / "out" / file.name))
        direct = runtime.decode(codes[index : index + 1])[0]
        expected_pixels = np.rint((np.clip(direct, -1, 1) + 1) * 127.5).astype(np.uint8).transpose(1, 2, 0)
        assert np.abs(decoded.astype(int) - expected_pixels.astype(int)).max() <= 1


def test_folders_resize_and_progress_bar(model_dir, tmp_path):
    folder = tmp_path / "many"
    folder.mkdir()
    for index in range(10):  # more than a handful: a progress bar
        shutil.copy(IMAGES / f"{'64x64' if index % 2 else '96x128'}_{index % 3}.png", folder / f"img{index:02d}.png")
    mixed = cli("encode", "--model", str(model_dir), "--output", str(tmp_path / "t.npz"), str(folder))
    assert_one_line_error(mixed, "img01.png", "differs from", "--resize")
    result = cli(
        "encode",
        "--model",
        str(model_dir),
        "--output",
        str(tmp_path / "t.npz"),
        "--resize",
        "64x64",
        "--batch-size",
        "4",
        str(folder),
    )
    assert result.returncode == 0, result.stderr
    assert "10/10" in result.stderr  # tqdm's bar
    with np.load(tmp_path / "t.npz") as tokens:
        assert tokens["codes"].shape == (10, 8, 8, 4)
        assert [Path(p).name for p in tokens["paths"]] == [f"img{index:02d}.png" for index in range(10)]


def test_grayscale_and_rgba_are_converted_with_a_notice(model_dir, tmp_path):
    rgb = np.asarray(Image.open(IMAGES / "64x64_0.png"))
    gray = tmp_path / "gray.png"
    Image.fromarray(rgb).convert("L").save(gray)
    rgba = write_png(tmp_path / "rgba.png", np.dstack([rgb, np.full(rgb.shape[:2], 200, np.uint8)]))
    result = cli("encode", "--model", str(model_dir), "--output", str(tmp_path / "t.npz"), str(gray), str(rgba))
    assert result.returncode == 0, result.stderr
    assert f"{gray}: converted L to RGB" in result.stderr and f"{rgba}: converted RGBA to RGB" in result.stderr


def test_outputs_are_never_overwritten_without_flag(model_dir, tmp_path):
    tokens = tmp_path / "t.npz"
    tokens.write_bytes(b"precious")
    result = cli("encode", "--model", str(model_dir), "--output", str(tokens), str(IMAGES / "64x64_0.png"))
    assert_one_line_error(result, str(tokens), "--overwrite")
    assert tokens.read_bytes() == b"precious"
    assert (
        cli(
            "encode", "--model", str(model_dir), "--output", str(tokens), "--overwrite", str(IMAGES / "64x64_0.png")
        ).returncode
        == 0
    )
    out = tmp_path / "out"
    out.mkdir()
    (out / "64x64_0.png").write_bytes(b"precious")
    result = cli("decode", "--model", str(model_dir), "--tokens", str(tokens), "--output", str(out))
    assert_one_line_error(result, "64x64_0.png", "--overwrite")
    assert (out / "64x64_0.png").read_bytes() == b"precious"


# -- bad images ----------------------------------------------------------------------------------------
def test_corrupt_and_missing_images(model_dir, tmp_path):
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes((IMAGES / "64x64_0.png").read_bytes()[:200])
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    for bad in (truncated, text, tmp_path / "missing.png"):
        result = cli(
            "encode",
            "--model",
            str(model_dir),
            "--output",
            str(tmp_path / "t.npz"),
            str(IMAGES / "64x64_0.png"),
            str(bad),
        )
        assert_one_line_error(result, str(bad))
    assert not (tmp_path / "t.npz").exists()


def test_sizes_not_divisible_by_the_factor(model_dir, tmp_path):
    odd = write_png(tmp_path / "odd.png", np.zeros((60, 64, 3), np.uint8))
    result = cli("encode", "--model", str(model_dir), "--output", str(tmp_path / "t.npz"), str(odd))
    assert_one_line_error(result, str(odd), "60x64", "downsampling factor 8")
    result = cli(
        "encode", "--model", str(model_dir), "--output", str(tmp_path / "t.npz"), "--resize", "60x64", str(odd)
    )
    assert_one_line_error(result, "60x64", "downsampling factor 8")


# -- bad tokens ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "codes, fragment",
    [
        (np.full((1, 8, 8, 4), 1024), "token id 1024 is outside [0, 1024)"),
        (np.full((1, 8, 8, 4), -1), "token id -1 is outside [0, 1024)"),
        (np.zeros((1, 8, 8, 3), np.int64), "shape [N, h, w, 4]"),
        (np.zeros((1, 8, 8), np.int64), "shape [N, h, w, 4]"),
        (np.zeros((1, 8, 8, 4), np.float32), "must be integer token ids"),
        (np.zeros((1, 1, 1, 4), np.int64), "1x1 token grid"),
    ],
    ids=["too-large", "negative", "wrong-groups", "no-group-axis", "float", "1x1-grid"],
)
def test_bad_token_arrays(model_dir, tmp_path, codes, fragment):
    tokens = tmp_path / "bad.npz"
    np.savez(tokens, codes=codes)
    result = cli("decode", "--model", str(model_dir), "--tokens", str(tokens), "--output", str(tmp_path / "out"))
    assert_one_line_error(result, str(tokens), fragment)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_unreadable_token_files(model_dir, tmp_path):
    not_npz = tmp_path / "t.npz"
    not_npz.write_text("hello")
    assert_one_line_error(
        cli("decode", "--model", str(model_dir), "--tokens", str(not_npz), "--output", str(tmp_path / "o")),
        str(not_npz),
        "not a readable",
    )
    no_codes = tmp_path / "nocodes.npz"
    np.savez(no_codes, tokens=np.zeros((1, 8, 8, 4), np.int64))
    assert_one_line_error(
        cli("decode", "--model", str(model_dir), "--tokens", str(no_codes), "--output", str(tmp_path / "o")),
        str(no_codes),
        "no 'codes'",
    )
    other_model = tmp_path / "other.npz"
    np.savez(other_model, codes=np.zeros((1, 8, 8, 4), np.int64), num_embed=np.int64(512))
    assert_one_line_error(
        cli("decode", "--model", str(model_dir), "--tokens", str(other_model), "--output", str(tmp_path / "o")),
        str(other_model),
        "num_embed=512",
    )


# -- bad model directories -----------------------------------------------------------------------------
def test_model_dir_without_manifest_or_with_changed_files(model_dir, tmp_path):
    image = str(IMAGES / "64x64_0.png")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_line_error(
        cli("encode", "--model", str(empty), "--output", str(tmp_path / "t.npz"), image), str(empty), "manifest.json"
    )

    tampered = tmp_path / "tampered"
    shutil.copytree(model_dir, tampered)
    graph = tampered / "tokenize.onnx"
    data = bytearray(graph.read_bytes())
    data[-1] ^= 0xFF
    graph.write_bytes(bytes(data))
    result = cli("encode", "--model", str(tampered), "--output", str(tmp_path / "t.npz"), image)
    assert_one_line_error(result, str(graph), "sha256")

    truncated = tmp_path / "truncated"
    shutil.copytree(model_dir, truncated)
    (truncated / "detokenize.onnx").write_bytes(b"")
    assert_one_line_error(
        cli("encode", "--model", str(truncated), "--output", str(tmp_path / "t.npz"), image), "detokenize.onnx", "size"
    )

    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    (broken / "manifest.json").write_text("{")
    assert_one_line_error(
        cli("encode", "--model", str(broken), "--output", str(tmp_path / "t.npz"), image), "manifest.json", "JSON"
    )


def test_missing_provider_is_one_clear_line(model_dir, tmp_path):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime build has CUDA")
    result = cli(
        "encode",
        "--model",
        str(model_dir),
        "--provider",
        "cuda",
        "--output",
        str(tmp_path / "t.npz"),
        str(IMAGES / "64x64_0.png"),
    )
    assert_one_line_error(result, "provider 'cuda'", "not available")
    with pytest.raises(BackendUnavailableError):
        load_runtime("onnx", model_dir, provider="tensorrt")


def test_manifest_format_is_checked(model_dir, tmp_path):
    future = tmp_path / "future"
    shutil.copytree(model_dir, future)
    manifest = json.loads((future / "manifest.json").read_text())
    manifest["format_version"] = 99
    (future / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="format_version 99"):
        load_runtime("onnx", future)


def test_graphs_missing_from_the_export_are_named(model_dir):
    runtime = load_runtime("onnx", model_dir)  # tokenize + detokenize only
    with pytest.raises(ArtifactError, match="has no encoder graph"):
        runtime.encode_latent(np.zeros((1, 3, 64, 64), np.float32))
    assert runtime.info.graphs == ("tokenize", "detokenize")



# -- a backend name that does not exist ----------------------------------------------------------------
BACKEND_LIST = "choose one of torch, onnx, openvino, trt"


@pytest.mark.parametrize(
    "command",
    [
        [sys.executable, "-m", "runtimes", "--backend", "bogus", "encode", "--model", "default", "--output", "{out}/t.npz", "x.png"],
        [sys.executable, "-m", "gsq_dataset", "--backend", "bogus", "--model", "default", "--input", "{out}/in", "--output", "{out}/tok"],
    ],
    ids=["python -m runtimes", "gsq-tokenize"],
)
def test_an_unknown_backend_is_refused_in_one_line_before_any_work(command, tmp_path):
    """--backend is a choice of runtimes.BACKENDS, checked by runtimes in every command that takes one
    (benchmarks/compare.py --backends: tests/benchmarks/test_benchmarks.py)."""
    if command[2] == "gsq_dataset":
        pytest.importorskip("ray", reason="gsq-tokenize needs ray[data]")
    result = subprocess.run(
        [part.format(out=tmp_path) for part in command], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert_one_line_error(result, "--backend 'bogus' is not a backend", BACKEND_LIST)
    assert result.stderr.startswith("error: ") and list(tmp_path.iterdir()) == []
    help_text = subprocess.run([*command[:3], "--help"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert "--backend [torch|onnx|openvino|trt]" in help_text.stdout  # a click.Choice of the backends


def test_python_m_runtimes_runs_the_chosen_backend(model_dir, tmp_path):
    files = [str(IMAGES / "64x64_0.png")]
    result = subprocess.run(
        [sys.executable, "-m", "runtimes", "--backend", "onnx", "encode", "--model", str(model_dir), "--threads", "1",
         "--output", str(tmp_path / "t.npz"), *files],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    with np.load(tmp_path / "t.npz") as tokens:
        np.testing.assert_array_equal(tokens["codes"], expected_vectors("gsq_f8_magvit")["codes_64x64"][:1])
