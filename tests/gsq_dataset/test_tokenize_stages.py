"""The rows and failure records gsq-tokenize's Ray stages write, run in this process without Ray:
prepare_batch (decode + preprocess) then the Tokenizer actor's class on a real torch runtime of a
tiny random GSQ model. What they stage is what a resumed run commits: each id's own tokens and
label, and every failed sample recorded (a lost record would be retried forever, or silently lost)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from tests.conftest import tiny_gsq_model
from PIL import Image

pytest.importorskip("ray", reason="gsq-tokenize needs Ray Data: pip install 'gsq-deploy[dataset]'")
pa = pytest.importorskip("pyarrow", reason="gsq-tokenize needs pyarrow: pip install 'gsq-deploy[dataset]'")
import torch  # noqa: E402

from gsq_core.checkpoint import save_native  # noqa: E402
from gsq_dataset.output import read_failure_lines  # noqa: E402
from gsq_dataset.preprocess import model_input, preprocess_bytes  # noqa: E402
from gsq_dataset.stages import Tokenizer, prepare_batch  # noqa: E402
from gsq_dataset.tokens import token_schema  # noqa: E402

SIZE = 32


class Counter:
    """Stands in for the ProgressCounter actor's handle: counter.add.remote(...) adds up here."""

    def __init__(self) -> None:
        self.tokenized = self.failed = 0
        self.add = self

    def remote(self, tokenized: int = 0, failed: int = 0, **_: object) -> None:
        self.tokenized += tokenized
        self.failed += failed


def png(seed: int, height: int, width: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    model = tiny_gsq_model()
    return save_native(model, tmp_path_factory.mktemp("tiny") / "tiny.safetensors"), model


def source_batch() -> tuple[pa.Table, dict[str, bytes]]:
    """Source rows as the readers give them: six images (two sizes), a corrupt one, a read error."""
    images = {f"img{i}.png": png(i, 40 + 8 * (i % 2), 36 + 4 * i) for i in range(6)}
    rows = [(name, i % 3 if i != 4 else None, data, None) for i, (name, data) in enumerate(images.items())]
    rows.insert(2, ("broken.jpg", 1, b"\xff\xd8 not a jpeg", None))
    rows.append(("shard.tar/x", 2, None, "truncated or corrupt tar member"))
    batch = pa.table(
        {
            "id": [r[0] for r in rows],
            "label": pa.array([r[1] for r in rows], pa.int64()),
            "image": pa.array([r[2] for r in rows], pa.binary()),
            "error": pa.array([r[3] for r in rows], pa.string()),
        }
    )
    return batch, images


def test_staged_rows_hold_each_ids_own_tokens_and_label_and_every_failure_is_recorded(tiny_checkpoint, tmp_path):
    checkpoint, model = tiny_checkpoint
    factor = model.downsample_factor
    failed_dir = tmp_path / "failed"
    counter = Counter()
    batch, images = source_batch()
    prepared = prepare_batch(batch, SIZE, factor, str(failed_dir), counter)
    assert list(prepared["id"]) == list(images)
    assert prepared["label"].tolist() == [0, 1, 2, 0, -1, 2]  # None travels as -1 between the stages
    recorded = {k: v for record in failed_dir.glob("*.jsonl") for k, v in read_failure_lines(record).items()}
    assert set(recorded) == {"broken.jpg", "shard.tar/x"} and counter.failed == 2
    assert recorded["shard.tar/x"] == "shard.tar/x: truncated or corrupt tar member"
    assert recorded["broken.jpg"].startswith("broken.jpg") and "corrupt" in recorded["broken.jpg"]

    tokenizer = Tokenizer("torch", str(checkpoint), {}, model.num_embed, str(failed_dir), counter, torch_threads=1)
    table = tokenizer(prepared)
    assert table.schema == token_schema(model.num_embed)
    assert table.column("id").to_pylist() == list(images)
    assert table.column("label").to_pylist() == [0, 1, 2, 0, None, 2]
    pixels = np.stack([preprocess_bytes(data, SIZE, factor, name) for name, data in images.items()])
    with torch.no_grad():
        expected = model.encode(torch.from_numpy(model_input(pixels))).numpy()
    grid = SIZE // factor
    assert table.column("token_height").to_pylist() == table.column("token_width").to_pylist() == [grid] * 6
    tokens = np.array(table.column("tokens").to_pylist()).reshape(expected.shape)
    np.testing.assert_array_equal(tokens, expected)
    assert len({row.tobytes() for row in expected}) == 6  # distinct images, distinct token grids
    assert counter.tokenized == 6


def test_a_sample_the_runtime_refuses_is_recorded_and_the_rest_of_its_batch_tokenized(tiny_checkpoint, tmp_path):
    checkpoint, model = tiny_checkpoint
    failed_dir = tmp_path / "failed"
    counter = Counter()
    tokenizer = Tokenizer("torch", str(checkpoint), {}, model.num_embed, str(failed_dir), counter, torch_threads=1)
    pixels = np.stack([preprocess_bytes(png(i, 48, 48), SIZE, model.downsample_factor, "x") for i in range(3)])
    pixels[1, 0, 0] = [255, 255, 255]
    batch = {"id": np.array(["a", "b", "c"], dtype=object), "label": np.array([1, -1, 2]), "pixels": pixels}
    real_encode = tokenizer.runtime.encode

    def encode(images: np.ndarray) -> np.ndarray:  # the runtime refuses the sample whose corner is white
        from gsq_core.errors import InputError

        if (images[:, :, 0, 0] == 1.0).all(axis=1).any():
            raise InputError("a white corner")
        return real_encode(images)

    tokenizer.runtime.encode = encode
    table = tokenizer(batch)
    assert table.column("id").to_pylist() == ["a", "c"] and table.column("label").to_pylist() == [1, 2]
    with torch.no_grad():
        expected = model.encode(torch.from_numpy(model_input(pixels[[0, 2]]))).numpy()
    np.testing.assert_array_equal(np.array(table.column("tokens").to_pylist()).reshape(expected.shape), expected)
    recorded = {k: v for record in failed_dir.glob("*.jsonl") for k, v in read_failure_lines(record).items()}
    assert recorded == {"b": "b: a white corner"} and (counter.tokenized, counter.failed) == (2, 1)
