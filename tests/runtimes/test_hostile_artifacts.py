"""Hostile artifact folders and token files: nothing outside the folder is opened or hashed, every
field is checked by type (runtimes.schema, runtimes.token_file), and token files are read by header
before any array is loaded."""

from __future__ import annotations

import io
import json
import os
import shutil
import zipfile

import numpy as np
import pytest
from tests.hostile_support import assert_one_line_error, files_under, run_cli

from gsq_core import InputError, load_tokenizer
from gsq_deploy.runtimes import artifacts as artifacts_module
from gsq_deploy.runtimes import load_runtime
from gsq_deploy.runtimes.artifacts import ArtifactError, file_sha256, load_artifact
from gsq_deploy.runtimes.token_file import read_token_file


@pytest.fixture
def artifact(tmp_path, default_onnx):
    """A private copy of the export, free to be tampered with: (artifact folder, its manifest dict)."""
    folder = tmp_path / "work" / "artifact"
    shutil.copytree(default_onnx, folder)
    return folder, json.loads((folder / "manifest.json").read_text())


def write_manifest(folder, manifest) -> None:
    (folder / "manifest.json").write_text(json.dumps(manifest))


@pytest.fixture
def hashed(monkeypatch):
    """Every path the artifact reader hashes, to prove what it never touched."""
    seen = []
    original = artifacts_module.file_sha256

    def spy(path):
        seen.append(os.path.realpath(path))
        return original(path)

    monkeypatch.setattr(artifacts_module, "file_sha256", spy)
    return seen


# -- containment ----------------------------------------------------------------------------------------
def move_graph_outside(folder, manifest, new_name):
    """Move tokenize.onnx to where new_name (relative to folder) points, with the right checksum."""
    target = (folder / new_name) if not os.path.isabs(new_name) else __import__("pathlib").Path(new_name)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(folder / "tokenize.onnx", target)
    checksum = manifest["files"].pop("tokenize.onnx")
    manifest["files"][new_name] = checksum
    manifest["graphs"]["tokenize"]["file"] = new_name
    write_manifest(folder, manifest)
    return target


@pytest.mark.parametrize("where", ["dotdot", "absolute"])
def test_graph_outside_the_folder_with_the_right_checksum_is_refused_unopened(artifact, hashed, where):
    folder, manifest = artifact
    name = "../../outside/tokenize.onnx" if where == "dotdot" else str(folder.parent.parent / "abs" / "tokenize.onnx")
    outside = move_graph_outside(folder, manifest, name)
    assert file_sha256(outside) == manifest["files"][name]["sha256"]
    hashed.clear()
    with pytest.raises(ArtifactError, match="outside the artifact folder"):
        load_runtime("onnx", folder)
    assert os.path.realpath(outside) not in hashed


def test_etc_passwd_is_never_read_or_hashed(artifact, hashed):
    folder, manifest = artifact
    manifest["files"]["../../../../../../../../etc/passwd"] = {"sha256": "0" * 64, "size": os.path.getsize("/etc/passwd")}
    write_manifest(folder, manifest)
    with pytest.raises(ArtifactError, match="outside the artifact folder"):
        load_artifact(folder)
    assert hashed == []


def test_symlink_inside_the_folder_that_leads_out_is_refused(artifact, tmp_path, hashed):
    folder, manifest = artifact
    outside = tmp_path / "elsewhere.onnx"
    shutil.move(folder / "tokenize.onnx", outside)
    (folder / "tokenize.onnx").symlink_to(outside)  # same name, same checksum, but not in the folder
    with pytest.raises(ArtifactError, match="symlink"):
        load_artifact(folder)
    assert hashed == []
    (folder / "tokenize.onnx").unlink()
    os.symlink(tmp_path, folder / "escape")  # an unlisted link out (graph external data could use it)
    shutil.move(outside, folder / "tokenize.onnx")
    with pytest.raises(ArtifactError, match="escape"):
        load_artifact(folder)


def test_backslash_and_weights_paths_are_checked_too(artifact):
    folder, manifest = artifact
    manifest["graphs"]["tokenize"]["weights"] = "..\\..\\secret.bin"
    write_manifest(folder, manifest)
    with pytest.raises(ArtifactError, match="outside the artifact folder"):
        load_artifact(folder)


def test_a_symlinked_artifact_folder_and_inner_links_are_fine(artifact, tmp_path):
    folder, manifest = artifact
    (folder / "graphs").mkdir()
    shutil.move(folder / "tokenize.onnx", folder / "graphs" / "tokenize.onnx")
    (folder / "tokenize.onnx").symlink_to("graphs/tokenize.onnx")  # stays inside: legitimate
    link = tmp_path / "link-to-artifact"
    link.symlink_to(folder)
    images = np.zeros((1, 3, 32, 32), np.float32)
    assert load_runtime("onnx", link).encode(images).shape == (1, 4, 4, 32)


# -- manifest fields by type --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "tamper, fragment",
    [
        (lambda m: m.update(files=list(m["files"])), "files must be an object"),
        (lambda m: m["graphs"].update(tokenize="tokenize.onnx"), "graphs.tokenize must be an object"),
        (lambda m: m.update(num_embed="many"), "num_embed must be an integer"),
        (lambda m: m.update(num_embed=True), "num_embed must be an integer"),
        (lambda m: m.update(num_group=0), "num_group must be an integer in"),
        (lambda m: m["shapes"].update(image_size=[64]), "shapes.image_size must be a list of 2"),
        (lambda m: m["files"]["tokenize.onnx"].update(size="12"), "files.tokenize.onnx.size must be an integer"),
        (lambda m: m.update(token_layout="XYZ"), "token_layout must be one of"),
        (lambda m: m.update(validation={"passed": "yes"}), "validation.passed must be true or false"),
        (lambda m: m["lookup"].update(code_block=-1), "lookup.code_block must be an integer"),
        (lambda m: m.pop("graphs"), "lacks graphs"),
        (lambda m: m["graphs"]["tokenize"].update(precision="fp8"), "graphs.tokenize.precision must be one of"),
        (lambda m: m["graphs"]["tokenize"].update(lookup_precision="int8"), "graphs.tokenize.lookup_precision must be"),
        (lambda m: m.update(precisions={"encoder": "fp32"}), "precisions lacks decoder"),
        (lambda m: m.update(precisions={"encoder": "fp32", "decoder": 8}), "precisions.decoder must be a string"),
    ],
)
def test_manifest_fields_of_the_wrong_type_are_one_line(artifact, tamper, fragment):
    folder, manifest = artifact
    tamper(manifest)
    write_manifest(folder, manifest)
    with pytest.raises(ArtifactError, match=None) as caught:
        load_runtime("onnx", folder)
    assert fragment in str(caught.value) and "\n" not in str(caught.value)


def test_lookup_section_accepts_new_fields(artifact, default_onnx):
    folder, manifest = artifact
    manifest["lookup"].update(row_block=4096, method="blocked", options={"any": "thing"})  # a newer exporter's
    write_manifest(folder, manifest)
    loaded, original = load_artifact(folder), load_artifact(default_onnx)
    assert loaded.manifest["lookup"] == manifest["lookup"]  # kept as written, the new fields included
    assert loaded.lookup_scratch_bytes_per_vector == original.lookup_scratch_bytes_per_vector
    images = np.random.default_rng(0).uniform(-1, 1, (2, 3, 64, 64)).astype(np.float32)
    codes = load_runtime("onnx", folder).encode(images)
    assert codes.shape == (2, 8, 8, loaded.num_group)
    np.testing.assert_array_equal(codes, load_runtime("onnx", default_onnx).encode(images))  # runs as before


def test_nested_and_oversized_manifests_are_one_line(artifact):
    folder, _ = artifact
    (folder / "manifest.json").write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(ArtifactError, match="not valid JSON|not a gsq-deploy"):
        load_artifact(folder)
    (folder / "manifest.json").write_bytes(b" " * (artifacts_module.MAX_MANIFEST_BYTES + 1))
    with pytest.raises(ArtifactError, match="too large for a manifest"):
        load_artifact(folder)


def test_runtime_cli_answers_a_tampered_manifest_in_one_line(artifact, tmp_path):
    folder, manifest = artifact
    manifest["num_embed"] = "many"
    write_manifest(folder, manifest)
    image = tmp_path / "x.png"
    from PIL import Image

    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(image)
    result = run_cli(["-m", "runtimes.onnx", "encode", "--model", str(folder), "--output", str(tmp_path / "t.npz"), str(image)])
    assert_one_line_error(result, "num_embed must be an integer")


# -- token files ------------------------------------------------------------------------------------------
def npz_with_raw_member(path, name: str, header: dict, payload: bytes, extra: dict | None = None) -> None:
    """An .npz whose `name` member has a hand-written npy header (it may claim anything)."""
    member = io.BytesIO()
    np.lib.format.write_array_header_1_0(member, header)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{name}.npy", member.getvalue() + payload)
        for key, value in (extra or {}).items():
            buffer = io.BytesIO()
            np.save(buffer, value)
            archive.writestr(f"{key}.npy", buffer.getvalue())


def decode_cli(model_dir, tokens, out):
    return run_cli(["-m", "runtimes.onnx", "decode", "--model", str(model_dir), "--tokens", str(tokens), "--output", str(out)])


def test_npz_claiming_256_tib_is_refused_from_its_header(default_onnx, tmp_path):
    tokens = tmp_path / "claims.npz"
    shape = (2**22, 2**11, 2**11, 4)  # 2**46 int64 ids: 256 TiB... x 8 bytes
    npz_with_raw_member(tokens, "codes", {"descr": "<i8", "fortran_order": False, "shape": shape}, b"\0" * 64)
    assert tokens.stat().st_size < 1000
    with pytest.raises(InputError, match="claims shape"):
        read_token_file(tokens)
    result = decode_cli(default_onnx, tokens, tmp_path / "out")
    assert_one_line_error(result, "claims shape", "TiB")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "arrays, fragment",
    [
        ({"num_embed": np.array("many")}, "'num_embed' must be one integer"),
        ({"num_group": np.float64(32.0)}, "'num_group' must be one integer"),
        ({"token_layout": np.int64(3)}, "'token_layout' must be one string"),
        ({"paths": np.arange(2)}, "'paths' must be a list of input paths"),
        ({"paths": np.array([["a"], ["b"]])}, "'paths' must be a list of input paths"),
        ({"paths": np.array(["a.png", ".."])}, "no usable output name"),
    ],
    ids=["num_embed-str", "num_group-float", "layout-int", "paths-int", "paths-2d", "paths-dotdot"],
)
def test_token_file_facts_of_the_wrong_type_are_one_line(tmp_path, arrays, fragment):
    tokens = tmp_path / "t.npz"
    np.savez(tokens, codes=np.zeros((2, 4, 4, 32), np.int64), **arrays)
    with pytest.raises(InputError, match=None) as caught:
        read_token_file(tokens)
    assert fragment in str(caught.value)


def test_pickled_paths_are_refused_without_unpickling(tmp_path):
    tokens = tmp_path / "t.npz"
    np.savez(tokens, codes=np.zeros((1, 4, 4, 32), np.int64), paths=np.array([object()], dtype=object))
    with pytest.raises(InputError, match="'paths' must be a list of input paths"):
        read_token_file(tokens)


def test_a_valid_1024_grid_is_refused_before_decoding(default_onnx, tmp_path):
    tokens = tmp_path / "grid.npz"
    np.savez_compressed(tokens, codes=np.zeros((1, 1024, 1024, 32), np.int64))
    assert tokens.stat().st_size < 10**6
    result = decode_cli(default_onnx, tokens, tmp_path / "out")
    assert_one_line_error(result, "8192x8192", "GSQ_MEMORY_BUDGET")
    assert not (tmp_path / "out").exists()


def corrupt_last_grid(tokens, count: int) -> None:
    """Flip one byte in the last grid's ids of a stored (uncompressed) npz: the zip CRC no longer holds."""
    data = bytearray(tokens.read_bytes())
    with zipfile.ZipFile(tokens) as archive:
        info = archive.getinfo("codes.npy")
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    data[start + info.compress_size - 5] ^= 0xFF
    tokens.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["crc", "id-out-of-range"])
def test_damage_in_the_last_grid_stops_decode_before_the_first_image(default_onnx, tmp_path, damage):
    codes = np.random.default_rng(0).integers(0, 1024, (3, 4, 4, 32))
    if damage == "id-out-of-range":
        codes[2, 3, 3, 31] = 5000
    tokens = tmp_path / "t.npz"
    np.savez(tokens, codes=codes, paths=np.array(["a.png", "b.png", "c.png"]))
    if damage == "crc":
        corrupt_last_grid(tokens, 3)
    out = tmp_path / "out"
    result = run_cli(["-m", "runtimes.onnx", "decode", "--model", str(default_onnx), "--tokens", str(tokens),
                      "--output", str(out), "--batch-size", "1"])
    assert_one_line_error(result, str(tokens))
    assert not out.exists() or files_under(out) == set()


def test_fortran_order_codes_decode_like_c_order(default_onnx, tmp_path):
    codes = np.random.default_rng(1).integers(0, 1024, (2, 4, 4, 32))
    np.savez(tmp_path / "c.npz", codes=codes)
    np.savez(tmp_path / "f.npz", codes=np.asfortranarray(codes))
    c_file, f_file = read_token_file(tmp_path / "c.npz"), read_token_file(tmp_path / "f.npz")
    np.testing.assert_array_equal(np.concatenate(list(c_file.batches(1))), codes)
    np.testing.assert_array_equal(np.concatenate(list(f_file.batches(1))), codes)
    assert c_file.id_range == f_file.id_range == (int(codes.min()), int(codes.max()))


def test_compare_refuses_an_artifact_of_another_checkpoint(tmp_path):
    from tests.conftest import FLEXGEN
    from PIL import Image

    from gsq_deploy.exporters.onnx import export_onnx

    other = tmp_path / "artifacts" / "onnx-fp32"
    export_onnx(load_tokenizer(FLEXGEN / "gsq_f8_magvit.pt"), other, graphs=("tokenize", "detokenize"),
                validate=False, progress=False, source={"checkpoint": "magvit", "sha256": "ab" * 32})
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(image)
    result = run_cli(["benchmarks/compare.py", "--ckpt", "default", "--images", str(image), "--backends", "torch,onnx",
                      "--artifacts", str(tmp_path / "artifacts"), "--out", str(tmp_path / "cmp"), "--no-progress"])
    assert_one_line_error(result, "onnx-fp32", "exported from checkpoint sha256 abababababab", "re-export")
    assert not (tmp_path / "cmp" / "report.json").exists()


def test_a_conversion_reads_its_source_artifact_like_a_runtime(artifact, tmp_path, hashed):
    from gsq_deploy.exporters.build import convert

    folder, manifest = artifact
    outside = move_graph_outside(folder, manifest, "../../outside/tokenize.onnx")
    with pytest.raises(ArtifactError, match="outside the artifact folder"):
        convert(None, folder, tmp_path / "converted", "openvino")
    assert os.path.realpath(outside) not in hashed and not (tmp_path / "converted").exists()
