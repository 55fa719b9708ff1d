"""gsq-tokenize's parts that need no Ray: the preprocessing, input discovery, the output folder's
commit rules, the worker plan (GPU requests tested without a GPU) and the token readers."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pa = pytest.importorskip("pyarrow", reason="gsq-tokenize needs pyarrow: pip install 'gsq-deploy[dataset]'")
import pyarrow.parquet as pq  # noqa: E402
from tests.conftest import gradient, token_table  # noqa: E402

from gsq_core.errors import InputError  # noqa: E402
from gsq_dataset.inputs import expand_ranges, find_inputs  # noqa: E402
from gsq_dataset.output import OutputError, OutputFolder  # noqa: E402
from gsq_dataset.preprocess import adm_center_crop, model_input, parse_size, preprocess_bytes, preprocess_image  # noqa: E402
from gsq_dataset.resources import NodeResources, plan_workers, runtime_options  # noqa: E402
from gsq_dataset.tokens import read_tokens, token_dtype  # noqa: E402
from gsq_deploy.runtimes import runtime_class  # noqa: E402


# -- preprocessing -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "height, width, size, halvings",
    [(300, 451, 64, 2), (96, 80, 64, 0), (128, 200, 64, 1), (64, 64, 64, 0), (257, 1000, 128, 1), (70, 333, 64, 0)],
)
def test_adm_center_crop_follows_the_documented_steps(height, width, size, halvings):
    image = gradient(height, width)
    # the steps written out with PIL, independently of the implementation's loop
    expected = image
    for _ in range(halvings):
        expected = expected.resize((expected.width // 2, expected.height // 2), resample=Image.Resampling.BOX)
    assert min(expected.size) < 2 * size
    short = min(expected.size)
    expected = expected.resize(
        (round(expected.width * size / short), round(expected.height * size / short)), resample=Image.Resampling.BICUBIC
    )
    top, left = (expected.height - size) // 2, (expected.width - size) // 2
    expected = np.asarray(expected)[top : top + size, left : left + size]
    cropped = adm_center_crop(image, size)
    assert cropped.shape == (size, size, 3) and cropped.dtype == np.uint8
    np.testing.assert_array_equal(cropped, expected)


def test_native_size_keeps_the_image_and_refuses_sizes_off_the_factor():
    image = gradient(48, 64)
    np.testing.assert_array_equal(preprocess_image(image, "native", 8), np.asarray(image))
    with pytest.raises(InputError, match="not a multiple of the downsampling factor 8"):
        preprocess_image(gradient(50, 64), "native", 8, "odd.png")


def test_preprocess_bytes_decodes_through_gsq_core_images(tmp_path):
    grey = Image.fromarray(np.full((40, 40), 100, np.uint8), mode="L")
    path = tmp_path / "grey.png"
    grey.save(path)
    pixels = preprocess_bytes(path.read_bytes(), 32, 8, "grey.png")
    assert pixels.shape == (32, 32, 3) and (pixels == 100).all()  # converted to RGB, then cropped
    with pytest.raises(InputError, match="broken.jpg: .*corrupt"):
        preprocess_bytes(b"\xff\xd8 not really a jpeg", 32, 8, "broken.jpg")
    images = model_input(pixels[None])
    assert images.shape == (1, 3, 32, 32) and images.dtype == np.float32
    np.testing.assert_allclose(images, 100 / 127.5 - 1, rtol=0, atol=1e-7)


def test_parse_size():
    assert parse_size("256") == 256 and parse_size("Native") == "native"
    for bad in ("0", "-8", "big"):
        with pytest.raises(InputError):
            parse_size(bad)


# -- inputs ------------------------------------------------------------------------------------------
def test_class_folders_give_labels_and_relative_ids(tmp_path):
    for name in ("b/x.png", "a/y.jpg", "a/z.webp"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "notes.txt").write_text("not an input")
    inputs = find_inputs([str(tmp_path)])
    assert inputs.format == "folder" and inputs.classes == ("a", "b")
    assert [inputs.relative_id(path) for path in inputs.files] == ["a/y.jpg", "a/z.webp", "b/x.png"]
    (tmp_path / "loose.png").write_bytes(b"")
    assert find_inputs([str(tmp_path)]).classes is None  # not every image sits in a class folder


def test_inputs_are_found_by_kind_and_refused_when_missing_empty_or_mixed(tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    for index in range(3):
        (shards / f"train-{index:03d}.tar").write_bytes(b"")
    assert find_inputs([str(shards)]).format == "webdataset"
    assert expand_ranges("s-{008..010}.tar") == ["s-008.tar", "s-009.tar", "s-010.tar"]
    ranged = find_inputs([str(shards / "train-{000..001}.tar")])
    assert [p.name for p in ranged.files] == ["train-000.tar", "train-001.tar"] and ranged.root == shards
    assert len(find_inputs([str(shards / "*.tar")]).files) == 3
    with pytest.raises(InputError, match="no such file or folder"):
        find_inputs([str(tmp_path / "missing")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no images"):
        find_inputs([str(tmp_path / "empty")])
    (shards / "x.parquet").write_bytes(b"")
    with pytest.raises(InputError, match="more than one kind of input"):
        find_inputs([str(shards)])
    assert find_inputs([str(shards)], "parquet").files == (shards / "x.parquet",)


def test_the_output_folder_is_never_an_input(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    (tmp_path / "tokens").mkdir()
    (tmp_path / "tokens" / "part.png").write_bytes(b"")
    inputs = find_inputs([str(tmp_path)], exclude=tmp_path / "tokens")
    assert [p.name for p in inputs.files] == ["a.png"]


# -- the output folder ---------------------------------------------------------------------------------

def test_commit_keeps_complete_shards_once_and_drops_partial_ones(tmp_path):
    folder = OutputFolder(tmp_path / "dst")
    folder.open(overwrite=False)
    run = folder.new_run_dir()
    pq.write_table(token_table(["a", "b"]), run / "shards" / "one.parquet")
    pq.write_table(token_table(["b", "c"]), run / "shards" / "two.parquet")  # "b" twice: a retried writer
    whole = run / "shards" / "three.parquet"
    pq.write_table(token_table(["d", "e"]), whole)
    whole.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])  # a writer killed mid-file
    (run / "failed" / "x.jsonl").write_text(
        json.dumps({"id": "bad.jpg", "reason": "corrupt"}) + "\n" + json.dumps({"id": "c", "reason": "??"}) + "\n{\"id\": \"cut"
    )
    result = folder.commit_staging()
    assert (result.shards, result.rows, result.dropped_partial, result.dropped_duplicates) == (2, 3, 1, 1)
    assert sorted(folder.committed_ids()) == ["a", "b", "c"]
    assert folder.failures() == {"bad.jpg": "corrupt"}  # "c" was tokenized; the cut line is ignored
    assert not folder.staging_path.exists()
    assert folder.done_ids() == {"a", "b", "c", "bad.jpg"}
    assert folder.counts() == {"tokenized": 3, "shards": 2, "failed": 1}
    # the shard that lost its duplicate row still reads back whole
    assert pq.read_table(tmp_path / "dst" / "two.parquet").column("id").to_pylist() == ["c"]
    folder.close()


@pytest.mark.parametrize("fmt", ["flexgen", "jsonl"])
def test_commit_in_another_format_writes_each_id_once_with_its_tokens(tmp_path, fmt):
    """flexgen / jsonl folders: a staged shard whose ids are all new is written whole, one that
    repeats a committed id loses that row only; each row keeps its own tokens."""
    folder = OutputFolder(tmp_path / "dst", fmt)
    folder.open(overwrite=False)
    run = folder.new_run_dir()
    pq.write_table(token_table(["a", "b"]), run / "shards" / "one.parquet")
    pq.write_table(token_table(["x", "b", "c"]), run / "shards" / "two.parquet")  # "b" again
    result = folder.commit_staging()
    assert (result.shards, result.rows, result.dropped_partial, result.dropped_duplicates) == (2, 4, 0, 1)
    assert sorted(folder.committed_ids()) == ["a", "b", "c", "x"]
    assert folder.counts()["tokenized"] == 4
    if fmt == "jsonl":
        rows = [json.loads(line) for line in (tmp_path / "dst").glob("*.jsonl").__next__().read_text().splitlines()]
        firsts = {row["id"]: np.asarray(row["tokens"]).reshape(-1)[0] for row in rows}
    else:
        firsts = {}
        for path in sorted((tmp_path / "dst").glob("*.parquet")):
            ids = json.loads(pq.read_schema(path).metadata[b"gsq.ids"])
            codes = pq.read_table(path).column("image_codes").to_pylist()
            firsts.update({i: c[0][0] for i, c in zip(ids, codes)})
    # token_table fills row i with i: "a" 0 and "b" 1 (shard one), "x" 0 and "c" 2 (shard two)
    assert firsts == {"a": 0, "b": 1, "x": 0, "c": 2}
    folder.close()


def test_new_log_path_is_a_fresh_file_in_the_logs_folder(tmp_path):
    folder = OutputFolder(tmp_path / "dst")
    folder.open(overwrite=False)
    first, second = folder.new_log_path(), folder.new_log_path()
    assert first.parent == second.parent == tmp_path / "dst" / "_logs" and first.parent.is_dir()
    assert first != second and first.suffix == second.suffix == ".log" and not first.exists()
    stamp, _, tail = first.stem.rpartition("-")
    assert len(tail) == 8 and int(tail, 16) >= 0 and len(stamp) == len("20260101-120000") and stamp[8] == "-"
    folder.close()


def test_output_folder_refuses_foreign_folders_a_second_writer_and_files(tmp_path):
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "keep.jpg").write_bytes(b"mine")
    with pytest.raises(OutputError, match="not a gsq-tokenize output\\); choose a new or empty folder"):
        OutputFolder(foreign).open(overwrite=True)
    assert (foreign / "keep.jpg").read_bytes() == b"mine"
    first = OutputFolder(tmp_path / "dst")
    first.open(overwrite=False)
    with pytest.raises(OutputError, match="another gsq-tokenize run"):
        OutputFolder(tmp_path / "dst").open(overwrite=False)
    first.close()
    (tmp_path / "file").write_text("")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        OutputFolder(tmp_path / "file" / "dst").open(overwrite=False)


def test_open_takes_an_empty_folder_and_overwrite_empties_only_our_files(tmp_path):
    with pytest.raises(OutputError, match="exists and is not a folder"):
        (tmp_path / "plain-file").write_text("")
        OutputFolder(tmp_path / "plain-file").open(overwrite=False)
    dst = tmp_path / "dst"
    (dst / "_staging" / "old-run").mkdir(parents=True)  # a killed first run: no manifest yet, only staging
    (dst / "_lock").write_text("")
    folder = OutputFolder(dst)
    folder.open(overwrite=False)
    assert folder.read_manifest() is None and (dst / "_staging" / "old-run").is_dir()
    folder.write_manifest({"format": "gsq-tokens", "runs": []})
    pq.write_table(token_table(["a"]), dst / "part-0.parquet")
    (dst / "_failed.jsonl").write_text(json.dumps({"id": "x", "reason": "bad"}) + "\n")
    (dst / "notes.txt").write_text("the user's")
    folder.close()
    again = OutputFolder(dst)
    again.open(overwrite=False)  # ours (a manifest): kept as it is
    assert again.committed_ids() == ["a"] and again.failures() == {"x": "bad"} and again.read_manifest() is not None
    again.close()
    cleared = OutputFolder(dst)
    cleared.open(overwrite=True)
    assert cleared.shard_paths() == [] and cleared.failures() == {} and cleared.read_manifest() is None
    assert not (dst / "_staging").exists() and (dst / "notes.txt").read_text() == "the user's"
    cleared.write_manifest({"format": "gsq-tokens", "runs": []})
    cleared.close()
    bare = OutputFolder(dst)
    bare.open(overwrite=True)  # no failed list, no staging: nothing else to remove
    assert bare.read_manifest() is None and (dst / "notes.txt").is_file()
    bare.close()
    with pytest.raises(OutputError, match=r"x{300}: cannot be used \(File name too long\)"):
        OutputFolder(tmp_path / ("x" * 300)).open(overwrite=False)
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere" / "at-all")  # its parent is writable, DST cannot be made
    with pytest.raises(OutputError, match=r"dangling/dst: cannot create it \(File exists\)"):
        OutputFolder(tmp_path / "dangling" / "dst").open(overwrite=False)
    nested = OutputFolder(tmp_path / "new" / "deeper" / "dst")
    nested.open(overwrite=False)
    assert nested.path.is_dir()
    nested.close()


def test_the_lock_names_its_holder_and_is_free_after_close(tmp_path):
    OutputFolder(tmp_path / "never-opened").close()  # nothing to release
    first = OutputFolder(tmp_path / "dst")
    first.open(overwrite=False)
    holder = f"pid {os.getpid()} on {os.uname().nodename}"
    assert (tmp_path / "dst" / "_lock").read_text() == holder + "\n"
    with pytest.raises(OutputError, match=f"another gsq-tokenize run \\({holder}\\) is writing here"):
        OutputFolder(tmp_path / "dst").open(overwrite=False)
    first.close()
    first.close()  # twice is harmless
    import fcntl

    with open(tmp_path / "dst" / "_lock", "w") as held:  # a run that has not written its line yet
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(OutputError, match=r"another gsq-tokenize run \(unknown\)"):
            OutputFolder(tmp_path / "dst").open(overwrite=False)
    second = OutputFolder(tmp_path / "dst")
    second.open(overwrite=False)  # free again; the stale holder line is replaced, not appended to
    assert (tmp_path / "dst" / "_lock").read_text() == holder + "\n"
    second.close()


def test_manifest_round_trip_and_refusals(tmp_path):
    folder = OutputFolder(tmp_path)
    manifest = {"format": "gsq-tokens", "counts": {"tokenized": 3}, "note": "é"}
    umask = os.umask(0o022)
    try:
        folder.write_manifest(manifest)
    finally:
        os.umask(umask)
    assert folder.read_manifest() == manifest and list(folder.read_manifest()) == list(manifest)  # in written order
    assert (tmp_path / "_manifest.json").stat().st_mode & 0o777 == 0o644  # readable by others, as a plain file
    text = (tmp_path / "_manifest.json").read_text()
    assert text.splitlines()[:3] == ["{", '  "format": "gsq-tokens",', '  "counts": {'] and text.endswith("}\n")  # for people
    assert [p.name for p in tmp_path.iterdir()] == ["_manifest.json"]  # no temporary left
    (tmp_path / "_manifest.json").write_text("{not json")
    with pytest.raises(OutputError, match=r"_manifest.json: not valid JSON .*pass --overwrite"):
        folder.read_manifest()
    for other in ([1, 2], {"format": "something-else"}):
        (tmp_path / "_manifest.json").write_text(json.dumps(other))
        with pytest.raises(OutputError, match="not a gsq-tokenize manifest; pass --overwrite"):
            folder.read_manifest()


def test_a_failed_atomic_write_leaves_neither_the_file_nor_a_temporary(tmp_path, monkeypatch):
    import tempfile

    from gsq_dataset.output import write_text_atomically

    other_filesystem = Path("/dev/shm")
    if other_filesystem.is_dir() and other_filesystem.stat().st_dev != tmp_path.stat().st_dev:
        monkeypatch.setattr(tempfile, "tempdir", str(other_filesystem))  # the temporary must sit beside the file
    write_text_atomically(tmp_path / "_failed.jsonl", "ok\n")
    assert (tmp_path / "_failed.jsonl").read_text() == "ok\n"
    (tmp_path / "_failed.jsonl").unlink()
    with pytest.raises(UnicodeEncodeError):
        write_text_atomically(tmp_path / "_failed.jsonl", "a lone surrogate \ud800")
    assert list(tmp_path.iterdir()) == []


def test_failure_records_keep_the_first_reason_and_skip_what_is_not_a_record(tmp_path):
    from gsq_dataset.output import read_failure_lines

    record = tmp_path / "x.jsonl"
    lines = ['{"id": "a", "reason": "first"}', "not json", '{"id": "a", "reason": "second"}', "[1, 2]", '"text"']
    lines += ["", '{"id": 7}', '{"reason": "no id"}', '{"id": "b", "reason": "é"}', '{"id": "cut']
    record.write_text("\n".join(lines), encoding="utf-8")
    assert read_failure_lines(record) == {"a": "first", "7": "", "b": "é"}


def test_new_run_dirs_are_distinct_and_hold_shards_and_failed(tmp_path):
    folder = OutputFolder(tmp_path)
    runs = [folder.new_run_dir() for _ in range(2)]
    assert runs[0] != runs[1] and all(run.parent == tmp_path / "_staging" for run in runs)
    assert all((run / "shards").is_dir() and (run / "failed").is_dir() for run in runs)
    (runs[1] / "shards").rmdir()  # a run killed before Ray made its folder: nothing of it to commit
    (runs[1] / "failed" / "f.jsonl").write_text(json.dumps({"id": "bad", "reason": "corrupt"}) + "\n")
    (runs[0] / "failed").rmdir()
    pq.write_table(token_table(["a", "b"]), runs[0] / "shards" / "s.parquet")
    (tmp_path / "_staging" / "stray.txt").write_text("not a run")
    result = folder.commit_staging()
    assert (result.shards, result.rows, result.failed) == (1, 2, 1)
    assert folder.committed_ids() == ["a", "b"] and folder.failures() == {"bad": "corrupt"}
    assert not folder.staging_path.exists()


# -- the worker plan -----------------------------------------------------------------------------------
class DeclaredRuntime:
    """A runtime class's declaration alone (what plan_workers and runtime_options read), with a GPU
    answer of our choosing: the plan must follow the declaration, not a backend name."""

    backend = "declared"
    options: tuple[str, ...] = ("threads", "device")
    torch_threads = False

    def __init__(self, gpu: bool):
        self.gpu = gpu

    def runs_on_gpu(self, options) -> bool:
        return self.gpu


def test_the_plan_follows_the_runtimes_gpu_declaration():
    nodes = [NodeResources(cpus=16, gpus=4), NodeResources(cpus=16, gpus=4)]
    gpu, cpu = plan_workers(DeclaredRuntime(True), {}, nodes), plan_workers(DeclaredRuntime(False), {}, nodes)
    assert (gpu.workers, gpu.gpus_per_worker, gpu.cpus_per_worker) == (8, 1.0, 1.0)
    assert (cpu.workers, cpu.gpus_per_worker, cpu.threads) == (4, 0.0, 8)
    with pytest.raises(InputError, match="the declared backend with these options runs on a GPU"):
        plan_workers(DeclaredRuntime(True), {}, [NodeResources(cpus=2)])
    # the real declarations: options decide, per backend
    for backend, options, on_gpu in [
        ("torch", {"device": "cuda"}, True), ("torch", {"device": "cuda:1"}, True), ("torch", {"device": "cpu"}, False),
        ("torch", {}, False), ("onnx", {"provider": "tensorrt"}, True), ("onnx", {"provider": "cuda"}, True),
        ("onnx", {"provider": "cpu"}, False), ("openvino", {"device": "GPU.1"}, True), ("openvino", {}, False),
        ("trt", {}, True),
    ]:  # fmt: skip
        assert runtime_class(backend).runs_on_gpu(options) is on_gpu, (backend, options)
        plan = plan_workers(runtime_class(backend), options, nodes)
        assert plan.gpus_per_worker == (1.0 if on_gpu else 0.0), (backend, options)


def test_gpu_backends_ask_for_one_gpu_per_worker():
    nodes = [NodeResources(cpus=16, gpus=4), NodeResources(cpus=16, gpus=4)]
    torch_runtime, onnx_runtime, trt = runtime_class("torch"), runtime_class("onnx"), runtime_class("trt")
    plan = plan_workers(torch_runtime, {"device": "cuda"}, nodes)
    assert (plan.workers, plan.gpus_per_worker, plan.cpus_per_worker) == (8, 1.0, 1.0)
    assert plan_workers(trt, {}, nodes, workers=3).workers == 3
    options, torch_threads = runtime_options(torch_runtime, {"device": "cuda"}, plan)
    assert options == {"device": "cuda"} and torch_threads is None
    with pytest.raises(InputError, match="needs 9 GPUs"):
        plan_workers(trt, {}, nodes, workers=9)
    with pytest.raises(InputError, match="has none"):
        plan_workers(onnx_runtime, {"provider": "cuda"}, [NodeResources(cpus=2)])


def test_cpu_backends_leave_room_for_decoding():
    onnx_runtime, torch_runtime = runtime_class("onnx"), runtime_class("torch")
    one_node = [NodeResources(cpus=2)]
    plan = plan_workers(onnx_runtime, {"provider": "cpu"}, one_node)  # two actors of one thread each
    assert (plan.workers, plan.gpus_per_worker, plan.threads) == (2, 0.0, 1)
    assert 2 * plan.cpus_per_worker + plan.task_cpus <= 2  # a decode task always fits next to the actors
    one = plan_workers(onnx_runtime, {}, one_node, workers=1)
    assert one.threads == 2 and one.cpus_per_worker + one.task_cpus <= 2
    options, _ = runtime_options(onnx_runtime, {"provider": "cpu", "threads": None}, one)
    assert options == {"provider": "cpu", "threads": 2}
    assert runtime_options(runtime_class("trt"), {}, one) == ({}, None)  # declares no threads option
    assert plan_workers(onnx_runtime, {}, [NodeResources(cpus=1)]).workers == 1  # never more actors than CPUs
    cluster = [NodeResources(cpus=8), NodeResources(cpus=8), NodeResources(cpus=0, gpus=0)]
    assert plan_workers(torch_runtime, {}, cluster).workers == 4
    assert runtime_options(torch_runtime, {}, plan_workers(torch_runtime, {}, cluster)) == ({}, 4)  # torch's threads


# -- reading tokens back -------------------------------------------------------------------------------
def test_token_dtype_is_the_smallest_that_holds_the_codebook():
    assert token_dtype(2**15) == np.int16 and token_dtype(2**15 + 1) == np.int32 and token_dtype(2**18) == np.int32


def test_read_tokens_reshapes_rows_to_grids(tmp_path):
    manifest = {"format": "gsq-tokens", "tokenizer": {"num_group": 4, "num_embed": 1024, "token_layout": "BHWG", "token_dtype": "int16"}}
    (tmp_path / "_manifest.json").write_text(json.dumps(manifest))
    pq.write_table(token_table(["x", "y", "z"]), tmp_path / "part.parquet")
    samples = list(read_tokens(tmp_path))
    assert [s.id for s in samples] == ["x", "y", "z"] and samples[1].codes.shape == (2, 2, 4)
    assert (samples[1].codes == 1).all() and samples[1].codes.dtype == np.int16
    assert [s.id for s in read_tokens(tmp_path, ids=["z", "x"])] == ["x", "z"]
    assert [s.id for s in read_tokens(tmp_path, limit=2)] == ["x", "y"]
    torch_data = pytest.importorskip("gsq_dataset.torch_data")
    dataset = torch_data.TokenDataset(tmp_path)
    assert len(dataset) == 3 and dataset[2]["id"] == "z" and dataset[2]["label"] == -1
    assert dataset[2]["codes"].shape == (2, 2, 4) and int(dataset[2]["codes"][0, 0, 0]) == 2
    os.remove(tmp_path / "_manifest.json")
    with pytest.raises(InputError, match="not a gsq-tokenize output"):
        list(read_tokens(tmp_path))


def test_no_script_folder_shadows_a_standard_library_module():
    """A script run from benchmarks/ or train/ puts that folder first on sys.path: a file there named
    like a standard module (tokenize.py, json.py...) would replace it for every import."""
    import sys

    repo = Path(__file__).resolve().parents[2]
    shadows = [
        path.relative_to(repo).as_posix()
        for folder in ("benchmarks", "train")
        for path in (repo / folder).glob("*.py")
        if path.stem in sys.stdlib_module_names
    ]
    assert shadows == []
