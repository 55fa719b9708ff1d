"""gsq-tokenize without Ray: the in-process executor (same stages, staging, commit and resume as the
Ray path), the executor choice, the per-stage clocks, and the output formats (ours, flexgen, jsonl)
read back with their upstream consumers' read paths. Cheap: a tiny random GSQ model, 32 px crops."""

from __future__ import annotations

import io
import json
import linecache
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pa = pytest.importorskip("pyarrow", reason="gsq-tokenize needs pyarrow: pip install 'gsq-deploy[dataset]'")
import pyarrow.parquet as pq  # noqa: E402
import skimage.data  # noqa: E402
import torch  # noqa: E402
from tests.conftest import tiny_gsq_model, token_table  # noqa: E402

from gsq_core import load_tokenizer  # noqa: E402
from gsq_core.errors import InputError  # noqa: E402
from gsq_dataset import read_tokens  # noqa: E402
from gsq_dataset.formats import FLEXGEN_SCHEMA  # noqa: E402
from gsq_dataset.job import TokenizeConfig, choose_executor, run_tokenize  # noqa: E402
from gsq_dataset.output import OutputFolder  # noqa: E402
from gsq_dataset.preprocess import model_input, preprocess_file  # noqa: E402
from gsq_dataset.samples import sample_key  # noqa: E402
from gsq_dataset.work import StageClock  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SIZE = 32
CLASSES = ("chelsea", "coffee")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    tiny_gsq_model().save(path)
    return str(path)


def crops(name: str, count: int, seed: int) -> list[np.ndarray]:
    photo = np.asarray(getattr(skimage.data, name)())[..., :3]
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        height, width = int(rng.integers(40, 120)), int(rng.integers(40, 120))
        top, left = int(rng.integers(0, photo.shape[0] - height)), int(rng.integers(0, photo.shape[1] - width))
        out.append(np.ascontiguousarray(photo[top : top + height, left : left + width]))
    return out


def save(pixels: np.ndarray, path: Path) -> None:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG" if path.suffix == ".png" else "JPEG")
    path.write_bytes(buffer.getvalue())


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Class folders of JPEG and PNG crops, and a corrupt file."""
    root = tmp_path_factory.mktemp("photos")
    for index, name in enumerate(CLASSES):
        (root / name).mkdir()
        for number, pixels in enumerate(crops(name, 7, seed=index)):
            save(pixels, root / name / f"{number:02d}.{'png' if number % 2 else 'jpg'}")
    (root / "coffee" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a JPEG at all")
    return root


def tokenize(model: str, source: Path, out: Path, **options) -> object:
    config = TokenizeConfig(
        model=model, inputs=[str(source)], output=out, size=SIZE, batch_size=3, rows_per_shard=4, progress=False, **options
    )
    return run_tokenize(config)


@pytest.fixture(scope="module")
def ours(tiny_model, photos, tmp_path_factory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("ours") / "tokens"
    return out, tokenize(tiny_model, photos, out)


def expected_ids(photos: Path) -> set[str]:
    return {p.relative_to(photos).as_posix() for p in photos.rglob("*") if p.is_file() and p.name != "corrupt.jpg"}


# -- the in-process executor ---------------------------------------------------------------------------
def test_local_run_every_id_once_with_labels_failures_and_eager_tokens(ours, photos, tiny_model):
    out, summary = ours
    samples = list(read_tokens(out))
    ids = [s.id for s in samples]
    assert len(ids) == len(set(ids)) and set(ids) == expected_ids(photos)
    assert all(s.label == sorted(CLASSES).index(s.id.split("/")[0]) for s in samples)
    failed = [json.loads(line) for line in (out / "_failed.jsonl").read_text().splitlines()]
    assert [f["id"] for f in failed] == ["coffee/corrupt.jpg"] and "corrupt" in failed[0]["reason"]
    assert len(list(out.glob("*.parquet"))) == 3  # 14 rows: shards of 6, 6 and 2 (>= 4 rows, from batches of 3)
    assert not (out / "_staging").exists()
    tokenizer = load_tokenizer(tiny_model)
    images = model_input(np.stack([preprocess_file(photos / i, SIZE, tokenizer.downsample_factor) for i in ids]))
    with torch.no_grad():
        codes = tokenizer.encode(torch.from_numpy(images)).numpy()
    np.testing.assert_array_equal(np.stack([s.codes for s in samples]).astype(np.int64), codes)
    assert summary.executor == "local" and summary.tokenized == 14 and summary.failed == 1


def test_a_sample_the_local_runtime_refuses_is_listed_failed_and_the_rest_tokenized(photos, tiny_model, tmp_path,
                                                                                 monkeypatch):
    """The local executor's tokenizer failures reach _failed.jsonl (as its decode failures do): a
    runtime that refuses an all-white image fails that sample alone, with the runtime's reason."""
    import gsq_dataset.local
    from gsq_core.errors import InputError as Refused

    source = tmp_path / "photos"
    shutil.copytree(photos, source)
    save(np.full((64, 64, 3), 255, np.uint8), source / "chelsea" / "white.png")
    real_load = gsq_dataset.local.load_tokenizer_runtime

    def refusing_load(*args, **kwargs):
        runtime = real_load(*args, **kwargs)
        real_encode = runtime.encode

        def encode(images: np.ndarray) -> np.ndarray:
            if (images == 1.0).all(axis=(1, 2, 3)).any():
                raise Refused("an all-white image")
            return real_encode(images)

        runtime.encode = encode
        return runtime

    monkeypatch.setattr(gsq_dataset.local, "load_tokenizer_runtime", refusing_load)
    out = tmp_path / "tokens"
    summary = tokenize(tiny_model, source, out, executor="local")
    failed = {entry["id"]: entry["reason"] for entry in map(json.loads, (out / "_failed.jsonl").read_text().splitlines())}
    assert set(failed) == {"coffee/corrupt.jpg", "chelsea/white.png"} and "all-white" in failed["chelsea/white.png"]
    assert {s.id for s in read_tokens(out)} == expected_ids(photos)
    assert summary.tokenized == 14 and summary.failed == 2


def test_local_run_reports_every_stage_and_its_bound_in_summary_and_manifest(ours):
    out, summary = ours
    run = json.loads((out / "_manifest.json").read_text())["runs"][-1]
    assert run["executor"] == "local" and run["executor_reason"].startswith("auto:")
    stages = run["stages"]
    assert stages == summary.stages
    assert all(stages["seconds_per_image"][s] > 0 for s in ("decode", "crop", "tokenize", "write"))
    rates = stages["images_per_s"]
    assert stages["bound"] == min(rates, key=rates.get) and stages["bound_images_per_s"] == rates[stages["bound"]]
    assert run["startup_seconds"] > 0 and run["shutdown_seconds"] >= 0
    lines = summary.lines()
    assert lines[1].startswith("executor: local (auto:")
    assert f"bound: {stages['bound']}" in lines[2] and "start-up" in lines[2]


def test_onnx_runs_two_tokenizer_calls_at_once_with_every_id_once_and_the_runtimes_tokens(photos, tiny_model, tmp_path):
    """ONNX Runtime declares concurrent calls: on 2+ cores the local executor keeps two single-thread
    encode calls in flight; every id lands once, with the tokens the same runtime gives each batch."""
    from gsq_deploy.exporters.onnx import export_onnx
    from gsq_deploy.runtimes import load_runtime

    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("two tokenizer calls at once need 2+ cores")
    model_dir = tmp_path / "tiny-onnx"
    export_onnx(load_tokenizer(tiny_model), model_dir, graphs=("tokenize",), validate=False, progress=False)
    out = tmp_path / "tokens"
    summary = tokenize(str(model_dir), photos, out, backend="onnx")
    run = json.loads((out / "_manifest.json").read_text())["runs"][-1]
    assert run["workers"]["tokenizer_calls"] == 2 and run["workers"]["threads"] == len(os.sched_getaffinity(0)) // 2
    assert run["stages"]["parallel"]["tokenize"] == 2
    samples = list(read_tokens(out))
    ids = [s.id for s in samples]
    assert len(ids) == len(set(ids)) and set(ids) == expected_ids(photos) and summary.tokenized == len(ids)
    runtime = load_runtime("onnx", model_dir, threads=1)
    for sample in samples:  # one image a call: the lookup's tokens do not depend on the batch here
        pixels = model_input(preprocess_file(photos / sample.id, SIZE, runtime.info.downsample_factor)[None])
        np.testing.assert_array_equal(sample.codes.astype(np.int64), runtime.encode(pixels)[0])


def test_a_rerun_does_nothing_and_new_files_are_the_only_work(tiny_model, photos, tmp_path):
    source = tmp_path / "photos"
    source.mkdir()
    for index, pixels in enumerate(crops("rocket", 5, seed=3)):
        save(pixels, source / f"{index}.png")
    out = tmp_path / "tokens"
    assert tokenize(tiny_model, source, out).tokenized == 5
    again = tokenize(tiny_model, source, out)
    assert (again.tokenized, again.skipped) == (0, 5)
    save(crops("rocket", 1, seed=4)[0], source / "new.png")
    more = tokenize(tiny_model, source, out)
    assert (more.tokenized, more.skipped) == (1, 5)
    assert sorted(s.id for s in read_tokens(out)) == ["0.png", "1.png", "2.png", "3.png", "4.png", "new.png"]


def test_executor_choice():
    def config(**options) -> TokenizeConfig:
        return TokenizeConfig(model="m", inputs=["x"], output=Path("y"), **options)

    os.environ.pop("RAY_ADDRESS", None)
    assert choose_executor(config())[0] == "local"
    assert choose_executor(config(backend="onnx", backend_options={"provider": "cpu"}))[0] == "local"
    assert choose_executor(config(ray_address="127.0.0.1:6379"))[0] == "ray"
    assert choose_executor(config(backend="onnx", backend_options={"provider": "cuda"}))[0] == "ray"
    assert choose_executor(config(num_cpus=2))[0] == "ray"
    assert choose_executor(config(executor="ray")) == ("ray", "asked for with --executor ray")
    with pytest.raises(InputError, match="cannot use the Ray cluster"):
        choose_executor(config(executor="local", ray_address="127.0.0.1:6379"))
    with pytest.raises(InputError, match="--executor 'fast'"):
        choose_executor(config(executor="fast"))


def test_stage_clock_bound_is_the_slowest_stage_with_its_workers():
    clock = StageClock()
    clock.add("decode", 4.0, 100)  # 40 ms
    clock.add("crop", 1.0, 100)  # 10 ms: decode+crop 50 ms on 2 threads -> 40 img/s
    clock.add("tokenize", 3.0, 100)  # 30 ms on 1 -> 33.3 img/s
    clock.add("write", 0.1, 100)
    report = clock.report({"decode": 2, "tokenize": 1, "write": 1})
    assert report["images_per_s"]["decode+crop"] == 40.0 and report["images_per_s"]["tokenize"] == 33.33
    assert report["bound"] == "tokenize" and report["bound_images_per_s"] == 33.33
    assert clock.report({"decode": 1, "tokenize": 1, "write": 1})["bound"] == "decode+crop"  # 20 img/s


def test_sample_key_is_rays_webdataset_rule():
    from ray.data._internal.datasource.webdataset_datasource import _base_plus_ext

    for name in ("a/b/sample_001.jpg", "x.tar.gz", "dir.v2/k.seg.png", "noext", "d/.hidden", "k.cls"):
        assert sample_key(name) == _base_plus_ext(name), name


def test_killed_local_run_resumes_with_every_id_once(tiny_model, tmp_path):
    source = tmp_path / "photos"
    source.mkdir()
    for index, pixels in enumerate(crops("astronaut", 30, seed=7)):
        save(pixels, source / f"{index:03d}.png")
    out = tmp_path / "tokens"
    args = ["--model", tiny_model, "--input", str(source), "--output", str(out), "--size", str(SIZE)]
    args += ["--batch-size", "1", "--rows-per-shard", "1", "--decoders", "1", "--threads", "1", "--executor", "local"]
    command = [sys.executable, "-m", "gsq_dataset", "--no-progress", *args]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    driver = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 120
    staged: list[Path] = []
    while driver.poll() is None and time.monotonic() < deadline and len(staged) < 3:
        staged = list((out / "_staging").rglob("*.parquet")) if (out / "_staging").exists() else []
        time.sleep(0.01)
    assert driver.poll() is None, f"the run ended before it could be killed: {driver.stderr.read().decode()[-2000:]}"
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait(timeout=30)
    assert not list(out.glob("*.parquet"))  # nothing committed: all in staging
    resumed = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    ids = [s.id for s in read_tokens(out)]
    assert sorted(ids) == [f"{index:03d}.png" for index in range(30)]
    done_before = int(resumed.stdout.split(" already done")[0].rsplit(", ", 1)[1])
    assert done_before >= 3 and "executor: local" in resumed.stdout


# -- output formats ----------------------------------------------------------------------------------
@pytest.fixture(scope="module", params=["flexgen", "jsonl"])
def other_format(request, tiny_model, photos, tmp_path_factory) -> tuple[str, Path]:
    out = tmp_path_factory.mktemp(request.param) / "tokens"
    tokenize(tiny_model, photos, out, output_format=request.param)
    return request.param, out


def test_every_format_holds_every_id_once_with_the_tokens_of_ours(other_format, ours):
    fmt, out = other_format
    reference = {s.id: s for s in read_tokens(ours[0])}
    samples = list(read_tokens(out))
    assert len(samples) == len({s.id for s in samples}) == len(reference)
    for sample in samples:
        np.testing.assert_array_equal(sample.codes, reference[sample.id].codes)
        assert sample.label == reference[sample.id].label
    assert json.loads((out / "_manifest.json").read_text())["output_format"] == fmt
    assert not list(out.glob("0*.parquet"))  # none of our own shards


def test_a_format_is_kept_across_runs(other_format, tiny_model, photos):
    fmt, out = other_format
    with pytest.raises(Exception, match="output format"):
        tokenize(tiny_model, photos, out, output_format="ours")
    again = tokenize(tiny_model, photos, out, output_format=fmt)
    assert again.tokenized == 0 and again.skipped == 15


def flexgen_read(folder: Path, split: str = "train") -> list[tuple[torch.Tensor, torch.Tensor]]:
    """What flex_gen's pretoken.py output offers its AR training: one {split}_shard_{rank}.parquet per
    rank with `label` and `image_codes`, read with pyarrow / pandas, each row to tensors."""
    items = []
    for path in sorted(folder.glob(f"{split}_shard_*.parquet"), key=lambda p: int(p.stem.rsplit("_", 1)[1])):
        frame = pq.read_table(path).to_pandas()
        for label, codes in zip(frame["label"], frame["image_codes"]):
            items.append((torch.tensor(label), torch.tensor(np.stack(codes))))
    return items


def test_flexgen_output_has_upstreams_schema_and_reads_with_its_read_path(tiny_model, photos, ours, tmp_path):
    out = tmp_path / "tokens"
    tokenize(tiny_model, photos, out, output_format="flexgen")
    files = sorted(p.name for p in out.glob("*.parquet"))
    assert files == ["train_shard_0.parquet", "train_shard_1.parquet", "train_shard_2.parquet"]
    for name in files:
        schema = pq.read_schema(out / name)
        assert schema.names == ["label", "image_codes"]
        assert schema.field("label").type == pa.int32()
        assert schema.field("image_codes").type.value_type.value_type == pa.int32()
        assert pa.types.is_list(schema.field("image_codes").type.value_type)
        assert pq.read_table(out / name).cast(FLEXGEN_SCHEMA).num_rows >= 1
    items = flexgen_read(out)
    reference = list(read_tokens(ours[0]))
    order = json.loads(pq.read_schema(out / "train_shard_0.parquet").metadata[b"gsq.ids"])
    first = next(s for s in reference if s.id == order[0])
    label, codes = items[0]
    assert codes.dtype == torch.int32 and codes.shape == (first.codes.shape[0] * first.codes.shape[1], first.codes.shape[2])
    np.testing.assert_array_equal(codes.numpy(), first.codes.reshape(-1, first.codes.shape[2]))
    assert int(label) == first.label
    assert len(items) == len(reference)


class TitokJsonl(torch.utils.data.Dataset):
    """TiTok / RAR's read path of a pretokenized JSONL (bytedance/1d-tokenizer): the lines counted,
    line idx + 1 fetched with linecache, its class_id and tokens made tensors."""

    def __init__(self, path: Path):
        self.path = str(path)
        with open(self.path) as handle:
            self.lines = sum(1 for _ in handle)
        linecache.checkcache(self.path)

    def __len__(self) -> int:
        return self.lines

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        data = json.loads(linecache.getline(self.path, index + 1).strip())
        return torch.tensor(data["class_id"]), torch.tensor(data["tokens"])


def test_jsonl_output_reads_with_titoks_read_path(tiny_model, photos, ours, tmp_path):
    out = tmp_path / "tokens"
    tokenize(tiny_model, photos, out, output_format="jsonl")
    dataset = TitokJsonl(out / "pretokenized.jsonl")
    reference = {s.id: s for s in read_tokens(ours[0])}
    assert len(dataset) == len(reference)
    ids = [json.loads(line)["id"] for line in (out / "pretokenized.jsonl").read_text().splitlines()]
    for index in (0, len(dataset) - 1):
        label, tokens = dataset[index]
        expected = reference[ids[index]]
        assert tokens.shape == expected.codes.shape and int(label) == expected.label
        np.testing.assert_array_equal(tokens.numpy(), expected.codes)


@pytest.mark.parametrize("fmt", ["ours", "flexgen", "jsonl"])
def test_commit_keeps_every_id_once_in_every_format(fmt, tmp_path):
    folder = OutputFolder(tmp_path / "dst", fmt)
    folder.open(overwrite=False)
    (folder.path / "_manifest.json").write_text(json.dumps({"format": "gsq-tokens"}))
    run = folder.new_run_dir()
    pq.write_table(token_table(["a", "b"]), run / "shards" / "one.parquet")
    pq.write_table(token_table(["b", "c"]), run / "shards" / "two.parquet")  # "b" again: a retried writer
    cut = run / "shards" / "three.parquet"
    pq.write_table(token_table(["d"]), cut)
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])  # a writer killed mid-file
    result = folder.commit_staging()
    assert (result.rows, result.dropped_partial, result.dropped_duplicates) == (3, 1, 1)
    assert sorted(folder.committed_ids()) == ["a", "b", "c"]
    run = folder.new_run_dir()  # a later run that staged a committed id again
    pq.write_table(token_table(["c", "e"]), run / "shards" / "four.parquet")
    folder.commit_staging()
    assert sorted(folder.committed_ids()) == ["a", "b", "c", "e"]  # once each
    assert folder.counts()["tokenized"] == 4
    folder.close()


# -- the other inputs, in-process ----------------------------------------------------------------------
def encoded(pixels: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def test_local_webdataset_keeps_samples_before_a_cut_and_lists_the_shard(tiny_model, tmp_path):
    import tarfile

    blobs = [encoded(p, "PNG") for p in crops("chelsea", 8, seed=5)]
    shards = tmp_path / "shards"
    shards.mkdir()
    for number, members in ((0, range(0, 4)), (1, range(4, 8))):
        with tarfile.open(shards / f"train-{number}.tar", "w") as tar:
            for index in members:
                for name, data in ((f"s{index}.png", blobs[index]), (f"s{index}.cls", str(index % 3).encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    damaged = shards / "train-1.tar"
    with tarfile.open(damaged) as tar:
        cut = tar.getmember("s6.png").offset_data + 50
    damaged.write_bytes(damaged.read_bytes()[:cut])
    out = tmp_path / "tokens"
    summary = tokenize(tiny_model, shards, out)
    samples = {s.id: s for s in read_tokens(out)}
    assert sorted(samples) == [f"train-0.tar/s{i}" for i in range(4)] + ["train-1.tar/s4", "train-1.tar/s5"]
    assert samples["train-0.tar/s2"].label == 2
    failed = {json.loads(line)["id"] for line in (out / "_failed.jsonl").read_text().splitlines()}
    assert failed == {"train-1.tar", "train-1.tar/s6"}
    assert summary.executor == "local"


def test_local_parquet_rows_with_ids_labels_and_a_garbage_row(tiny_model, tmp_path):
    blobs = [encoded(p, "PNG") for p in crops("coffee", 4, seed=6)]
    data = tmp_path / "hf"
    data.mkdir()
    images = [{"bytes": b, "path": None} for b in blobs] + [{"bytes": b"garbage", "path": None}]
    pq.write_table(pa.table({"image": images, "label": [0, 1, None, 2, 1]}), data / "train-0.parquet", row_group_size=2)
    out = tmp_path / "tokens"
    tokenize(tiny_model, data, out)
    samples = {s.id: s for s in read_tokens(out)}
    assert sorted(samples) == [f"train-0.parquet/{r}" for r in range(4)]
    assert [samples[f"train-0.parquet/{r}"].label for r in range(4)] == [0, 1, None, 2]
    assert "corrupt" in (out / "_failed.jsonl").read_text() and "train-0.parquet/4" in (out / "_failed.jsonl").read_text()
