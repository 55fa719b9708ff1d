"""gsq-tokenize end to end, as users run it: real subprocesses of the CLI on a real Ray cluster.

One `ray start --head --block` cluster per module (its own process group, free ports, its own temp
folder, on 127.0.0.1), stopped by killing that process group; one run starts its own local
instance. Ray 2.60 stays on loopback with RAY_AUTH_MODE=disabled and
RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 set for the head and for the drivers (docs/tokenize.md).
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from tests.conftest import FLEXGEN, assert_one_line_error
from PIL import Image

pytest.importorskip("ray", reason="gsq-tokenize needs Ray Data: pip install 'gsq-deploy[dataset]'")
pa = pytest.importorskip("pyarrow", reason="gsq-tokenize needs pyarrow: pip install 'gsq-deploy[dataset]'")
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402

from gsq_core import load_tokenizer  # noqa: E402
from gsq_core.fidelity import score_gaps  # noqa: E402
from gsq_core.prepare import sample_photo  # noqa: E402
from gsq_dataset import read_tokens  # noqa: E402
from gsq_dataset.preprocess import model_input, preprocess_bytes, preprocess_file  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
LOOPBACK_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
SIZE = 64
CLASSES = ("astronaut", "coffee", "chelsea")
PHOTOS_PER_CLASS = 8


# -- fixtures ----------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def photo_crops(name: str, count: int, seed: int) -> list[np.ndarray]:
    """Crops and flips of one of scikit-image's photos, 70 to 180 pixels a side (so --size 64 resizes,
    crops, and for the larger ones halves first)."""
    photo = sample_photo(name)
    rng = np.random.default_rng(seed)
    crops = []
    for _ in range(count):
        height, width = int(rng.integers(70, 180)), int(rng.integers(70, 180))
        top = int(rng.integers(0, photo.shape[0] - height))
        left = int(rng.integers(0, photo.shape[1] - width))
        crop = photo[top : top + height, left : left + width]
        crops.append(np.ascontiguousarray(crop[:, ::-1] if rng.random() < 0.5 else crop))
    return crops


def encoded(pixels: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory) -> Path:
    """ImageNet layout: one folder per class, jpg and png, plus a corrupt and a truncated image."""
    root = tmp_path_factory.mktemp("photos")
    for index, name in enumerate(CLASSES):
        (root / name).mkdir()
        for number, pixels in enumerate(photo_crops(name, PHOTOS_PER_CLASS, seed=index)):
            fmt = "PNG" if number % 2 else "JPEG"
            (root / name / f"{number:02d}.{'png' if fmt == 'PNG' else 'jpg'}").write_bytes(encoded(pixels, fmt))
    (root / "coffee" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 these bytes are not a JPEG")
    whole = encoded(photo_crops("rocket", 1, seed=9)[0], "PNG")
    (root / "chelsea" / "truncated.png").write_bytes(whole[: len(whole) // 3])
    return root


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory) -> tuple[str, int]:
    """A real `ray start --head --block` on 127.0.0.1 and free ports, in its own process group:
    (address, pid of that `ray start`, which leads its process group)."""
    port = free_port()
    temp_dir = tempfile.mkdtemp(prefix="gsq-test-ray-")  # short: Ray's socket paths have a length limit
    env = {**os.environ, **LOOPBACK_ENV}
    command = [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block"]
    command += ["--node-ip-address", "127.0.0.1", "--port", str(port), "--num-cpus", "2"]
    command += ["--object-store-memory", str(300 * 2**20), "--temp-dir", temp_dir, "--disable-usage-stats"]
    command += ["--include-dashboard", "false", "--dashboard-agent-listen-port", str(free_port())]
    command += ["--dashboard-agent-grpc-port", str(free_port()), "--runtime-env-agent-port", str(free_port())]
    command += ["--ray-client-server-port", str(free_port()), "--metrics-export-port", str(free_port())]
    log = open(Path(temp_dir) / "head.log", "w")
    head = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        probe = "import ray; ray.init(address=%r); print(int(ray.cluster_resources()['CPU']))" % address
        while True:
            if head.poll() is not None:
                pytest.fail(f"ray start exited: {(Path(temp_dir) / 'head.log').read_text()[-2000:]}")
            ready = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
            if ready.returncode == 0 and ready.stdout.strip() == "2":
                break
            if time.monotonic() > deadline:
                pytest.fail(f"the Ray head did not come up: {ready.stderr[-2000:]}")
            time.sleep(1)
        yield address, head.pid
    finally:
        kill_group(head)
        log.close()
        subprocess.run(["rm", "-rf", temp_dir], check=False)


@pytest.fixture(scope="module")
def ray_cluster(ray_head) -> str:
    """The shared cluster's address."""
    return ray_head[0]


def kill_group(process: subprocess.Popen) -> None:
    """SIGKILL the process group a test started (never `ray stop` or a kill by name)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(timeout=30)


def tokenize(*args: str, timeout: float = 300, cluster: str | None = None) -> subprocess.CompletedProcess:
    """gsq-tokenize in a subprocess (on the cluster when given, else its own local Ray instance)."""
    command = [sys.executable, "-m", "gsq_dataset", "--no-progress", *args]
    if cluster:
        command += ["--ray-address", cluster]
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    return subprocess.run(command, cwd=REPO, env={**env, **LOOPBACK_ENV}, capture_output=True, text=True, timeout=timeout)


def assert_ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, f"stdout: {result.stdout}\nstderr: {result.stderr[-4000:]}"
    assert "Traceback" not in result.stderr, result.stderr


def shard_table(folder: Path) -> pa.Table:
    return pa.concat_tables([pq.read_table(path) for path in sorted(folder.glob("*.parquet"))])


def failures(folder: Path) -> dict[str, str]:
    lines = (folder / "_failed.jsonl").read_text().splitlines()
    return {entry["id"]: entry["reason"] for entry in map(json.loads, lines)}


def eager_codes(model: str, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, object]:
    """Codes and latent of the eager reference for float images [B, 3, H, W]."""
    tokenizer = load_tokenizer(model)
    with torch.no_grad():
        batch = torch.from_numpy(images)
        return tokenizer.encode(batch).numpy(), tokenizer.encode_latent(batch).numpy(), tokenizer


@pytest.fixture(scope="module")
def folder_run(photo_folder, ray_cluster, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """The class-folder photos tokenized by the torch backend on the cluster, 2 workers."""
    out = tmp_path_factory.mktemp("folder-run") / "tokens"
    result = tokenize(
        "--model", "default", "--input", str(photo_folder), "--output", str(out), "--size", str(SIZE),
        "--workers", "2", "--batch-size", "4", cluster=ray_cluster,
    )  # fmt: skip
    return out, result


# -- a folder with class subfolders --------------------------------------------------------------------
def test_folder_every_image_once_with_its_class_and_failures_listed(folder_run, photo_folder):
    out, result = folder_run
    assert_ok(result)
    table = shard_table(out)
    ids = table.column("id").to_pylist()
    expected = {
        path.relative_to(photo_folder).as_posix()
        for path in photo_folder.rglob("*")
        if path.is_file() and path.name not in ("corrupt.jpg", "truncated.png")
    }
    assert len(ids) == len(set(ids)) == len(expected) == len(CLASSES) * PHOTOS_PER_CLASS
    assert set(ids) == expected
    labels = dict(zip(ids, table.column("label").to_pylist()))
    assert all(labels[i] == sorted(CLASSES).index(i.split("/")[0]) for i in ids)
    assert table.schema.field("tokens").type == pa.list_(pa.int16())  # V = 1024 fits int16
    listed = failures(out)
    assert set(listed) == {"coffee/corrupt.jpg", "chelsea/truncated.png"}
    assert all("corrupt" in reason for reason in listed.values())
    assert f"tokenized {len(expected)} images this run" in result.stdout and ", 2 failed" in result.stdout
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["counts"] == {"tokenized": len(expected), "shards": len(list(out.glob("*.parquet"))), "failed": 2}
    assert manifest["tokenizer"]["num_embed"] == 1024 and manifest["preprocessing"]["size"] == SIZE
    assert manifest["runs"][-1]["workers"]["workers"] == 2
    assert manifest["runs"][-1]["executor"] == "ray" and "executor: ray (auto: the Ray cluster at" in result.stdout


def test_a_healthy_ray_run_prints_no_ray_log_lines(folder_run):
    """Ray's own lines (its core worker's `E ... core_worker.cc` about actor constructor arguments,
    Ray Data's warnings) go to the run's log file under DST/_logs, not to the terminal."""
    out, result = folder_run
    assert_ok(result)
    assert result.stderr.strip() == "", result.stderr
    logs = list((out / "_logs").glob("*.log"))
    assert len(logs) == 1


def test_folder_tokens_equal_eager_encode_of_the_documented_preprocessing(folder_run, photo_folder):
    out, result = folder_run
    assert_ok(result)
    samples = list(read_tokens(out))
    images = model_input(np.stack([preprocess_file(photo_folder / s.id, SIZE, 8) for s in samples]))
    codes, _, _ = eager_codes("default", images)
    assert codes.shape == (len(samples), SIZE // 8, SIZE // 8, 32)
    np.testing.assert_array_equal(np.stack([s.codes for s in samples]).astype(np.int64), codes)


def test_output_reads_with_pyarrow_and_hf_datasets_without_our_packages(folder_run, tmp_path):
    out, result = folder_run
    assert_ok(result)
    script = f"""
import sys
for blocked in ("gsq_core", "gsq_dataset", "runtimes", "exporters", "train", "ray"):
    sys.modules[blocked] = None  # importing any of them now fails
import pyarrow.dataset as ds
table = ds.dataset({str(out)!r}, format="parquet").to_table()
import datasets
hf = datasets.load_dataset("parquet", data_files={str(out / '*.parquet')!r}, split="train", cache_dir={str(tmp_path)!r})
assert hf.num_rows == table.num_rows, (hf.num_rows, table.num_rows)
assert sorted(hf["id"]) == sorted(table.column("id").to_pylist())
row = hf[0]
assert len(row["tokens"]) == row["token_height"] * row["token_width"] * 32
print(table.num_rows, hf.features["tokens"])
"""
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    run = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.split()[0] == str(len(list(read_tokens(out))))


def test_torch_dataset_matches_the_reader(folder_run):
    from gsq_dataset.torch_data import TokenDataset

    out, _ = folder_run
    dataset = TokenDataset(out)
    samples = list(read_tokens(out))
    assert len(dataset) == len(samples)
    for index in (0, len(samples) - 1):
        item = dataset[index]
        assert item["id"] == samples[index].id and item["label"] == samples[index].label
        np.testing.assert_array_equal(item["codes"].numpy(), samples[index].codes)


def test_decode_cli_renders_chosen_ids_of_a_token_folder(folder_run, tmp_path):
    out, _ = folder_run
    samples = list(read_tokens(out))
    chosen = [samples[0].id, samples[5].id]
    decode = [sys.executable, "-m", "runtimes.torch", "decode", "--model", "default", "--tokens", str(out)]
    result = subprocess.run(
        [*decode, "--output", str(tmp_path / "png"), "--ids", ",".join(chosen)], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    written = sorted(p.relative_to(tmp_path / "png").as_posix() for p in (tmp_path / "png").rglob("*.png"))
    assert written == sorted(f"{i}.png" for i in chosen)
    tokenizer = load_tokenizer("default")
    with torch.no_grad():
        recon = tokenizer.decode(torch.from_numpy(samples[0].codes[None].astype(np.int64))).numpy()[0]
    expected = np.rint((np.clip(recon, -1, 1) + 1) * 127.5).transpose(1, 2, 0)
    assert np.abs(np.asarray(Image.open(tmp_path / "png" / f"{chosen[0]}.png")).astype(int) - expected).max() <= 1
    limited = subprocess.run([*decode, "--output", str(tmp_path / "two"), "--limit", "2"], cwd=REPO, capture_output=True, text=True)
    assert limited.returncode == 0 and len(list((tmp_path / "two").rglob("*.png"))) == 2
    missing = subprocess.run([*decode, "--output", str(tmp_path / "x"), "--ids", "no/such.jpg"], cwd=REPO, capture_output=True, text=True)
    assert missing.returncode != 0 and missing.stderr.strip().startswith("error: ") and "no/such.jpg" in missing.stderr


def test_rerun_of_a_finished_job_does_nothing_and_another_model_is_refused(folder_run, photo_folder, ray_cluster):
    out, _ = folder_run
    before = sorted(p.name for p in out.glob("*.parquet"))
    again = tokenize("--model", "default", "--input", str(photo_folder), "--output", str(out), "--size", str(SIZE), cluster=ray_cluster)
    assert_ok(again)
    assert "tokenized 0 images this run" in again.stdout and f"{len(CLASSES) * PHOTOS_PER_CLASS + 2} already done" in again.stdout
    assert sorted(p.name for p in out.glob("*.parquet")) == before
    common = ("--input", str(photo_folder), "--output", str(out))
    other_model = tokenize("--model", str(FLEXGEN / "gsq_f8_magvit.pt"), *common, "--size", str(SIZE))
    assert_one_line_error(other_model, str(out), "model (sha256)", "--overwrite")
    other_size = tokenize("--model", "default", *common, "--size", "128")
    assert_one_line_error(other_size, "preprocessing size 64", "128")
    assert sorted(p.name for p in out.glob("*.parquet")) == before


# -- WebDataset shards, onnx backend -------------------------------------------------------------------
def write_shard(path: Path, samples: list[tuple[str, bytes, str, int | None]]) -> None:
    """A WebDataset tar: per sample <key>.<ext> image bytes and <key>.cls (when a label is given)."""
    with tarfile.open(path, "w") as tar:
        for key, data, ext, label in samples:
            members = [(f"{key}.{ext}", data)] + ([(f"{key}.cls", str(label).encode())] if label is not None else [])
            for name, payload in members:
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory) -> Path:
    from gsq_deploy.exporters.onnx import export_onnx

    out = tmp_path_factory.mktemp("onnx") / "default-onnx"
    export_onnx(load_tokenizer("default"), out, graphs=("tokenize", "detokenize"), validate=False, progress=False)
    return out


def test_webdataset_shards_onnx_tokens_are_eager_or_near_ties(ray_cluster, onnx_model, tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    photos = photo_crops("astronaut", 6, seed=1) + photo_crops("coffee", 6, seed=2) + photo_crops("chelsea", 6, seed=3)
    payloads = {f"s{i:03d}": (encoded(p, "JPEG" if i % 2 else "PNG"), "jpg" if i % 2 else "png") for i, p in enumerate(photos)}
    keys = sorted(payloads)
    write_shard(shards / "train-000.tar", [(k, *payloads[k], i % 3) for i, k in enumerate(keys[:6])])
    write_shard(shards / "train-001.tar", [(k, *payloads[k], None) for k in keys[6:12]])
    damaged = shards / "train-002.tar"
    write_shard(damaged, [(k, *payloads[k], 7) for k in keys[12:]])
    with tarfile.open(damaged) as tar:  # cut the shard inside the 4th sample's image
        cut = tar.getmember(f"{keys[15]}.{payloads[keys[15]][1]}").offset_data + 100
    damaged.write_bytes(damaged.read_bytes()[:cut])
    out = tmp_path / "tokens"
    result = tokenize(
        "--backend", "onnx", "--model", str(onnx_model), "--input", str(shards / "train-{000..002}.tar"),
        "--output", str(out), "--size", str(SIZE), cluster=ray_cluster,
    )  # fmt: skip
    assert_ok(result)
    table = shard_table(out)
    ids = table.column("id").to_pylist()
    expected = [f"train-000.tar/{k}" for k in keys[:6]] + [f"train-001.tar/{k}" for k in keys[6:12]]
    expected += [f"train-002.tar/{k}" for k in keys[12:15]]  # complete before the cut
    assert len(ids) == len(set(ids)) and sorted(ids) == sorted(expected)
    labels = dict(zip(ids, table.column("label").to_pylist()))
    assert [labels[f"train-000.tar/{k}"] for k in keys[:6]] == [0, 1, 2, 0, 1, 2]
    assert all(labels[f"train-001.tar/{k}"] is None for k in keys[6:12])
    listed = failures(out)
    assert set(listed) == {"train-002.tar", f"train-002.tar/{keys[15]}"}
    assert "truncated or corrupt" in listed["train-002.tar"]
    # every token differing from eager is a near-tie of the eager latent
    samples = {s.id: s for s in read_tokens(out)}
    order = sorted(samples)
    images = model_input(np.stack([preprocess_bytes(payloads[i.split("/")[1]][0], SIZE, 8, i) for i in order]))
    codes, latent, tokenizer = eager_codes("default", images)
    onnx_codes = np.stack([samples[i].codes for i in order]).astype(np.int64)
    gaps = score_gaps(latent, onnx_codes, tokenizer.quantizer.lookup_spec())
    assert (onnx_codes == codes).mean() > 0.99
    assert gaps.max() <= 1e-5, gaps.max()


# -- Hugging Face-style Parquet, local Ray instance ----------------------------------------------------
def test_hf_parquet_with_a_garbage_row_on_a_local_instance(tmp_path):
    import datasets

    data = tmp_path / "hf"
    data.mkdir()
    photos = photo_crops("rocket", 5, seed=4) + photo_crops("chelsea", 4, seed=5)
    blobs = [encoded(p, "PNG") for p in photos]
    # one file written by HF datasets itself (its Image feature stores {bytes, path})
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b", "c"])})
    first = datasets.Dataset.from_dict(
        {"image": [{"bytes": b, "path": None} for b in blobs[:5]], "label": [0, 1, 2, 0, 1]}, features=features
    )
    first.to_parquet(str(data / "train-00000-of-00002.parquet"))
    # one written with pyarrow: a garbage row and a row without bytes, in two row groups
    images = [{"bytes": b, "path": f"x{i}.png"} for i, b in enumerate(blobs[5:])] + [{"bytes": b"garbage", "path": None}]
    images.append({"bytes": None, "path": "elsewhere.png"})
    second = pa.table({"image": images, "label": [2, 2, None, 1, 0, 1]})
    pq.write_table(second, data / "train-00001-of-00002.parquet", row_group_size=3)
    out = tmp_path / "tokens"
    result = tokenize("--model", "default", "--input", str(data), "--output", str(out), "--size", str(SIZE), "--num-cpus", "2")
    assert_ok(result)
    table = shard_table(out)
    ids = table.column("id").to_pylist()
    expected = [f"train-00000-of-00002.parquet/{r}" for r in range(5)]
    expected += [f"train-00001-of-00002.parquet/{r}" for r in range(4)]
    assert len(ids) == len(set(ids)) and sorted(ids) == sorted(expected)
    labels = dict(zip(ids, table.column("label").to_pylist()))
    assert [labels[f"train-00000-of-00002.parquet/{r}"] for r in range(5)] == [0, 1, 2, 0, 1]
    assert [labels[f"train-00001-of-00002.parquet/{r}"] for r in range(4)] == [2, 2, None, 1]
    listed = failures(out)
    assert set(listed) == {"train-00001-of-00002.parquet/4", "train-00001-of-00002.parquet/5"}
    assert "corrupt" in listed["train-00001-of-00002.parquet/4"]
    assert "no image bytes" in listed["train-00001-of-00002.parquet/5"]
    samples = {s.id: s for s in read_tokens(out)}
    images = model_input(np.stack([preprocess_bytes(b, SIZE, 8, "x") for b in blobs]))
    codes, _, _ = eager_codes("default", images)
    np.testing.assert_array_equal(samples["train-00001-of-00002.parquet/3"].codes, codes[8])
    np.testing.assert_array_equal(samples["train-00000-of-00002.parquet/0"].codes, codes[0])


def small_shard_run(
    tmp_path: Path, photos: list[np.ndarray], address: str, batch_size: int = 2
) -> tuple[list[str], list[str], dict[str, str], Path]:
    """(gsq-tokenize arguments, the command running them on the cluster at `address`, its env, DST) of a
    run over `photos` (written as PNGs) slow enough to interrupt: batches of `batch_size`, shards of 2
    rows, one worker of one thread."""
    src = tmp_path / "photos"
    src.mkdir()
    for index, pixels in enumerate(photos):
        (src / f"{index:03d}.png").write_bytes(encoded(pixels, "PNG"))
    out = tmp_path / "tokens"
    args = ["--model", "default", "--input", str(src), "--output", str(out), "--size", "128"]
    args += ["--batch-size", str(batch_size), "--rows-per-shard", "2", "--workers", "1", "--threads", "1"]
    command = [sys.executable, "-m", "gsq_dataset", "--no-progress", *args, "--ray-address", address]
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, **LOOPBACK_ENV}
    return args, command, env, out


# -- killed part-way, then resumed ---------------------------------------------------------------------
KILLED_AT_A_COMMIT = """
import os, signal, sys
from gsq_dataset.cli import main
renames, replace = [], os.replace
def replace_then_maybe_die(source, target):  # SIGKILL right after the Nth shard rename into DST
    replace(source, target)
    if str(target).endswith(".parquet") and "_staging" not in str(target):
        renames.append(target)
        if len(renames) == int(os.environ["GSQ_TEST_KILL_AFTER_SHARD_RENAMES"]):
            os.kill(os.getpid(), signal.SIGKILL)
os.replace = replace_then_maybe_die
sys.argv[0] = "gsq-tokenize"
main()
"""


def test_killed_before_and_during_a_commit_then_rerun_every_id_once_with_eager_tokens(ray_cluster, tmp_path):
    """Run 1 is SIGKILLed while Ray writes (nothing committed), run 2 after its 2nd shard rename into
    DST (in its first commit of run 1's staging, or in its own final commit), run 3 finishes: every id
    once, and its tokens those of an uninterrupted run (eager encode of the same preprocessing)."""
    photos = photo_crops("astronaut", 24, seed=11) + photo_crops("coffee", 24, seed=12)
    # batches of 1: the torch backend's tokens depend on the batch size at near-ties (6 of 393,216 token
    # values differ between batches of 1 and 2 on these photos), and a rerun batches other samples together
    args, command, env, out = small_shard_run(tmp_path, photos, ray_cluster, batch_size=1)
    driver = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    staged: list[Path] = []
    deadline = time.monotonic() + 240
    while driver.poll() is None and time.monotonic() < deadline:
        staged = list((out / "_staging").rglob("*.parquet")) if (out / "_staging").exists() else []
        if len(staged) >= 2:
            break
        time.sleep(0.02)
    assert driver.poll() is None, f"the run ended before it could be killed: {driver.stderr.read().decode()[-2000:]}"
    os.kill(driver.pid, signal.SIGKILL)  # the driver only; its workers go with its job
    driver.wait(timeout=30)
    kill_group(driver)  # what the killed driver left in its process group
    assert driver.returncode == -signal.SIGKILL and staged
    assert not list(out.glob("*.parquet"))  # nothing committed yet: it was all in staging

    command_2 = [sys.executable, "-c", KILLED_AT_A_COMMIT, *command[3:]]  # command: python -m gsq_dataset ...
    env_2 = {**env, "GSQ_TEST_KILL_AFTER_SHARD_RENAMES": "2"}
    killed = subprocess.Popen(command_2, cwd=REPO, env=env_2, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        _, stderr = killed.communicate(timeout=300)
    finally:
        kill_group(killed)
    assert killed.returncode == -signal.SIGKILL, stderr.decode()[-3000:]
    assert len(list(out.glob("*.parquet"))) == 2 and (out / "_staging").is_dir()  # killed mid-commit

    resumed = tokenize(*args, cluster=ray_cluster)
    assert_ok(resumed)
    samples = list(read_tokens(out))
    assert sorted(s.id for s in samples) == [f"{index:03d}.png" for index in range(len(photos))]  # each id once
    done_before = int(resumed.stdout.split(" already done")[0].rsplit(", ", 1)[1])
    tokenized_now = int(resumed.stdout.split("tokenized ")[1].split(" ")[0])
    assert done_before >= 2 and tokenized_now + done_before == len(photos)
    assert not (out / "_staging").exists()
    src = out.parent / "photos"
    tokenizer, threads = load_tokenizer("default"), torch.get_num_threads()
    torch.set_num_threads(1)  # as the run's one worker of one thread, one image a call
    try:
        with torch.no_grad():
            codes = [tokenizer.encode(torch.from_numpy(model_input(preprocess_file(src / s.id, 128, 8)[None])))[0] for s in samples]
    finally:
        torch.set_num_threads(threads)
    np.testing.assert_array_equal(np.stack([s.codes for s in samples]).astype(np.int64), np.stack(codes).astype(np.int64))
    assert all(s.label is None for s in samples)


def parent_pid(pid: int) -> int | None:
    """The parent of a process, from /proc (None once it is gone)."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def tokenizer_actor_pids(head_pid: int) -> list[int]:
    """Processes descended from our `ray start` that run a gsq-tokenize tokenizer actor (Ray names
    actor processes ray::<class>; its workers get sessions of their own, so the ancestry, not the
    process group, tells ours from anyone else's), read from /proc."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "MapBatches(Tokenizer)" not in command:
            continue
        ancestor = parent_pid(int(entry.name))
        for _ in range(8):  # worker <- raylet <- ray start, a few levels at most
            if ancestor in (None, 0, 1) or ancestor == head_pid:
                break
            ancestor = parent_pid(ancestor)
        if ancestor == head_pid:
            pids.append(int(entry.name))
    return pids


def test_a_lost_worker_is_replaced_and_the_run_finishes_every_id_once(ray_head, tmp_path):
    address, head_pid = ray_head
    photos = photo_crops("rocket", 20, seed=21) + photo_crops("chelsea", 20, seed=22)
    _, command, env, out = small_shard_run(tmp_path, photos, address)
    driver = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed: list[int] = []
    deadline = time.monotonic() + 240
    while driver.poll() is None and time.monotonic() < deadline and not killed:
        staged = list((out / "_staging").rglob("*.parquet")) if (out / "_staging").exists() else []
        actors = tokenizer_actor_pids(head_pid)
        if staged and actors:
            for pid in actors:  # the worker process dies, as on a lost node; the driver lives on
                os.kill(pid, signal.SIGKILL)
            killed = actors
        time.sleep(0.02)
    stdout, stderr = driver.communicate(timeout=300)
    assert killed, f"no tokenizer actor was found to kill before the run ended: {stderr[-2000:]}"
    assert driver.returncode == 0, stderr[-4000:]
    ids = shard_table(out).column("id").to_pylist()
    assert sorted(ids) == [f"{index:03d}.png" for index in range(len(photos))]  # every id exactly once
    assert f"tokenized {len(photos)} images this run" in stdout


# -- bad input: one error line ---------------------------------------------------------------------------
def test_bad_inputs_end_in_one_error_line(photo_folder, tmp_path):
    out = str(tmp_path / "out")
    missing = tokenize("--model", "default", "--input", str(tmp_path / "nowhere"), "--output", out)
    assert_one_line_error(missing, "nowhere", "no such file or folder")
    (tmp_path / "empty").mkdir()
    empty = tokenize("--model", "default", "--input", str(tmp_path / "empty"), "--output", out)
    assert_one_line_error(empty, "empty", "holds no images")
    (tmp_path / "a-file").write_text("")
    unwritable = tokenize("--model", "default", "--input", str(photo_folder), "--output", str(tmp_path / "a-file" / "out"))
    assert_one_line_error(unwritable, "a-file", "not a folder")
    backend = tokenize("--backend", "tensorflow", "--model", "default", "--input", str(photo_folder), "--output", out)
    assert_one_line_error(backend, "--backend 'tensorflow'", "torch, onnx")
    size = tokenize("--model", "default", "--input", str(photo_folder), "--output", out, "--size", "100")
    assert_one_line_error(size, "--size 100", "downsampling factor 8")
    option = tokenize("--model", "default", "--input", str(photo_folder), "--output", out, "--provider", "cuda")
    assert_one_line_error(option, "--provider", "torch backend")
    assert not Path(out).exists()


def test_a_ray_address_that_does_not_answer_fails_in_bounded_time(photo_folder, tmp_path):
    common = ("--model", "default", "--input", str(photo_folder), "--output", str(tmp_path / "out"))
    refused = tokenize(*common, "--ray-address", f"127.0.0.1:{free_port()}")
    assert_one_line_error(refused, "nothing answers there")
    with socket.socket() as silent:  # accepts connections and never speaks
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        started = time.monotonic()
        mute = tokenize(*common, "--ray-address", f"127.0.0.1:{silent.getsockname()[1]}", "--connect-timeout", "3", timeout=90)
    assert time.monotonic() - started < 60
    assert mute.returncode != 0 and "Traceback" not in mute.stderr
    assert mute.stderr.strip().splitlines()[-1].startswith("error: ") and "did not connect within 3 s" in mute.stderr


def test_gpu_plans_configure_the_actor_pool_with_one_gpu_per_actor():
    """What Ray is asked for, without a GPU: the tokenizer stage's actor pool on a 2 x 4-GPU cluster."""
    from gsq_dataset.resources import NodeResources, plan_workers
    from gsq_dataset.stages import actor_pool_args
    from gsq_deploy.runtimes import runtime_class

    nodes = [NodeResources(cpus=32, gpus=4), NodeResources(cpus=32, gpus=4)]
    onnx_runtime = runtime_class("onnx")
    gpu = actor_pool_args(plan_workers(onnx_runtime, {"provider": "cuda"}, nodes), batch_size=128)
    assert gpu["compute"].min_size == gpu["compute"].max_size == 8
    assert (gpu["num_gpus"], gpu["num_cpus"], gpu["batch_size"]) == (1.0, 1.0, 128)
    cpu = actor_pool_args(plan_workers(onnx_runtime, {"provider": "cpu"}, [NodeResources(cpus=2)]), batch_size=16)
    assert cpu["compute"].min_size == 2 and cpu["num_gpus"] is None and cpu["num_cpus"] == 0.75


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: gsq-tokenize --device cuda asks Ray for a GPU per worker")
def test_torch_cuda_backend_tokens_match_cpu(photo_folder, tmp_path):
    out = tmp_path / "tokens"
    result = tokenize("--model", "default", "--device", "cuda", "--input", str(photo_folder), "--output", str(out), "--size", str(SIZE))
    assert_ok(result)
    samples = list(read_tokens(out))
    images = model_input(np.stack([preprocess_file(photo_folder / s.id, SIZE, 8) for s in samples]))
    codes, _, _ = eager_codes("default", images)
    assert (np.stack([s.codes for s in samples]) == codes).mean() > 0.999


def test_native_size_tokenizes_images_as_they_are(ray_cluster, tmp_path):
    src = tmp_path / "native"
    src.mkdir()
    crops = {"wide.png": (48, 64), "tall.png": (80, 56), "square.png": (64, 64), "odd.png": (70, 64)}
    photo = sample_photo("coffee")
    for name, (height, width) in crops.items():
        Image.fromarray(photo[:height, :width]).save(src / name)
    out = tmp_path / "tokens"
    assert_ok(tokenize("--model", "default", "--input", str(src), "--output", str(out), "--size", "native", cluster=ray_cluster))
    samples = {s.id: s for s in read_tokens(out)}
    assert sorted(samples) == ["square.png", "tall.png", "wide.png"]
    assert "multiple of the downsampling factor 8" in failures(out)["odd.png"]
    for name, sample in samples.items():
        codes, _, _ = eager_codes("default", model_input(preprocess_file(src / name, "native", 8)[None]))
        assert sample.codes.shape == (crops[name][0] // 8, crops[name][1] // 8, 32)
        np.testing.assert_array_equal(sample.codes, codes[0])
