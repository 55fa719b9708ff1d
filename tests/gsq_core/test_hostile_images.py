"""Hostile images: one place (gsq_core.images) decides what an input image is, and every entry point
(encode, roundtrip, compare.py, --calib-images, training data, bytes) inherits its rules.

Silent wrong answers (16-bit clipped, floats in 0..255 encoded, 1x1 grids decoded to NaN, two
outputs with one name) and tracebacks (decompression bombs) are the cases kept here.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from tests.hostile_support import (
    assert_one_line_error,
    blank_png,
    files_under,
    grey_photo,
    photo,
    png_header_only,
    run_cli,
    save,
)
from PIL import Image

from gsq_core import InputError
from gsq_core.images import (
    decode_image,
    float_to_uint8,
    inspect_image,
    read_image,
    rgb_image,
    uint8_to_float,
)


# -- modes: scaled, never clipped --------------------------------------------------------------------------
def test_16bit_greyscale_png_is_scaled_not_clipped(tmp_path, default_model):
    grey = grey_photo()
    eight = save(tmp_path / "g8.png", grey)
    sixteen = save(tmp_path / "g16.png", grey.astype(np.uint16) * 257)  # the same picture in 16 bits
    assert Image.open(sixteen).mode == "I;16"
    loaded16, loaded8 = read_image(sixteen), read_image(eight)
    np.testing.assert_allclose(loaded16.pixels, loaded8.pixels, atol=1e-6)
    assert any("16-bit" in note and "scaled" in note for note in loaded16.notes)
    codes16 = default_model.encode(torch.from_numpy(loaded16.pixels[None]))
    codes8 = default_model.encode(torch.from_numpy(loaded8.pixels[None]))
    assert (codes16 == codes8).float().mean() > 0.99  # clipping matched 0.4% of positions


@pytest.mark.parametrize("mode", ["I;16B", "I"])
def test_other_16bit_layouts_are_scaled_like_i16(tmp_path, mode):
    grey = grey_photo()
    values = grey.astype(np.uint16) * 257
    if mode == "I;16B":
        image = Image.frombytes("I;16B", (values.shape[1], values.shape[0]), values.astype(">u2").tobytes())
        path = tmp_path / "g16b.tif"
    else:
        image = Image.fromarray(values.astype(np.int32))  # mode "I": 32-bit integers holding 16-bit values
        path = tmp_path / "gI.tif"
    image.save(path)
    assert Image.open(path).mode == mode
    np.testing.assert_allclose(read_image(path).pixels, uint8_to_float(np.repeat(grey[..., None], 3, 2)), atol=1e-6)


def test_32bit_integer_image_beyond_16_bits_is_refused(tmp_path):
    values = grey_photo().astype(np.int32) * 1000  # up to 255,000: no known scale
    path = tmp_path / "wide.tif"
    Image.fromarray(values).save(path)
    with pytest.raises(InputError, match="outside the 16-bit range"):
        read_image(path)


def test_float_image_in_unit_range_is_scaled_and_out_of_range_refused(tmp_path):
    grey = grey_photo()
    unit = tmp_path / "unit.tif"
    Image.fromarray(grey.astype(np.float32) / 255).save(unit)
    np.testing.assert_allclose(
        read_image(unit).pixels, uint8_to_float(np.repeat(grey[..., None], 3, 2)), atol=1e-6
    )
    raw = tmp_path / "raw.tif"
    Image.fromarray(grey.astype(np.float32)).save(raw)  # 0..255 as floats
    with pytest.raises(InputError, match=r"must lie in \[0, 1\]"):
        read_image(raw)
    nan = tmp_path / "nan.tif"
    bad = grey.astype(np.float32) / 255
    bad[3, 3] = np.nan
    Image.fromarray(bad).save(nan)
    with pytest.raises(InputError, match="NaN"):
        read_image(nan)


# -- channel order ------------------------------------------------------------------------------------------
PRIMARIES = np.array([[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [255, 255, 255]]], np.uint8)  # R, G / B, white


@pytest.mark.parametrize("mode", ["RGB", "P", "RGBA"])
def test_channels_are_red_green_blue_in_that_order(tmp_path, mode):
    """Pixels are [3, H, W] with channel 0 red and 2 blue, from files and bytes of every 8-bit mode
    (an image read as BGR is another image to the model)."""
    image = Image.fromarray(PRIMARIES)
    path = tmp_path / f"primaries-{mode}.png"
    (image.convert(mode) if mode != "P" else image.quantize(4)).save(path)
    expected = np.array([[[1, -1], [-1, 1]], [[-1, 1], [-1, 1]], [[-1, -1], [1, 1]]], np.float32)
    np.testing.assert_array_equal(read_image(path).pixels, expected)
    np.testing.assert_array_equal(decode_image(path.read_bytes(), path.name).pixels, expected)
    np.testing.assert_array_equal(uint8_to_float(PRIMARIES), expected)
    np.testing.assert_array_equal(float_to_uint8(expected), PRIMARIES)
    np.testing.assert_array_equal(np.asarray(rgb_image(path)), PRIMARIES)


# -- alpha, palette, frames, orientation --------------------------------------------------------------------
def test_transparency_is_composited_on_white(tmp_path):
    rgb = photo(32, 32)
    alpha = np.zeros((32, 32), np.uint8)
    alpha[:, 16:] = 255  # left half fully transparent, right half opaque
    loaded = read_image(save(tmp_path / "a.png", np.dstack([rgb, alpha])))
    pixels = float_to_uint8(loaded.pixels)
    assert (pixels[:, :16] == 255).all()  # white, not whatever RGB hid under alpha 0
    np.testing.assert_array_equal(pixels[:, 16:], rgb[:, 16:])
    assert any("composited on white" in note for note in loaded.notes)


def test_fully_opaque_alpha_is_exactly_the_rgb(tmp_path):
    rgb = photo(32, 32)
    loaded = read_image(save(tmp_path / "opaque.png", np.dstack([rgb, np.full((32, 32), 255, np.uint8)])))
    np.testing.assert_array_equal(float_to_uint8(loaded.pixels), rgb)


def test_palette_transparency_and_la_are_composited(tmp_path):
    palette = Image.fromarray(photo(32, 32)).convert("P")
    palette.save(tmp_path / "p.png", transparency=int(np.asarray(palette)[0, 0]))
    pixels = float_to_uint8(read_image(tmp_path / "p.png").pixels)
    assert (pixels[0, 0] == 255).all()
    grey = grey_photo(32, 32)
    alpha = np.full((32, 32), 0, np.uint8)
    Image.fromarray(np.dstack([grey, alpha]), mode="LA").save(tmp_path / "la.png")
    assert (float_to_uint8(read_image(tmp_path / "la.png").pixels) == 255).all()


def test_animation_gives_its_first_frame_with_a_note(tmp_path):
    frames = [Image.fromarray(photo(32, 32)), Image.fromarray(photo(32, 32)[::-1].copy())]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    loaded = read_image(tmp_path / "anim.gif")
    first = np.asarray(Image.open(tmp_path / "anim.gif").convert("RGB"))
    np.testing.assert_array_equal(float_to_uint8(loaded.pixels), first)
    assert any("several frames" in note for note in loaded.notes)


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_gives_the_displayed_picture(tmp_path, orientation):
    from PIL import ImageOps

    image = Image.fromarray(photo(24, 40))
    exif = image.getexif()
    exif[0x0112] = orientation
    path = tmp_path / f"o{orientation}.jpg"
    image.save(path, exif=exif.tobytes(), quality=95)
    displayed = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))
    header = inspect_image(path)
    assert (header.height, header.width) == displayed.shape[:2]
    np.testing.assert_array_equal(float_to_uint8(read_image(path).pixels), displayed)


# -- decoding budget: decompression bombs -------------------------------------------------------------------
@pytest.mark.parametrize("side", [100_000, 9_000])  # over Pillow's own limit, and only over ours
def test_bomb_header_is_refused_before_decoding_by_every_reader(tmp_path, side):
    data = png_header_only(side, side)
    assert len(data) < 100
    path = tmp_path / "bomb.png"
    path.write_bytes(data)
    for call in (lambda: read_image(path), lambda: inspect_image(path), lambda: decode_image(data, "row-17")):
        with pytest.raises(InputError, match="pixels"):
            call()
    with pytest.raises(InputError, match="row-17"):
        decode_image(data, "row-17")


def test_raising_max_pixels_is_the_way_out(tmp_path):
    path = blank_png(tmp_path / "wide.png", 64, 2048)
    with pytest.raises(InputError, match="--max-pixels"):
        read_image(path, max_pixels=100_000)
    assert read_image(path, max_pixels=200_000).pixels.shape == (3, 64, 2048)


def test_truncated_and_garbage_bytes_are_one_input_error(tmp_path):
    good = io.BytesIO()
    Image.fromarray(photo()).save(good, format="PNG")
    for name, data in (("cut.png", good.getvalue()[:300]), ("junk.png", b"not an image"), ("empty.png", b"")):
        with pytest.raises(InputError, match=name):
            decode_image(data, name)


def test_bytes_entry_point_matches_the_file_reader(tmp_path):
    path = save(tmp_path / "x.png", photo())
    loaded = decode_image(path.read_bytes(), "x.png")
    np.testing.assert_array_equal(loaded.pixels, read_image(path).pixels)
    assert np.array_equal(np.asarray(rgb_image(path.read_bytes(), "x.png")), photo())


# -- the range contract of encode ----------------------------------------------------------------------------
def test_encode_refuses_0_255_floats_with_the_fix(default_model, default_onnx):
    from gsq_deploy.runtimes import load_runtime

    pixels = photo().transpose(2, 0, 1)[None].astype(np.float32)  # 0..255, the classic mistake
    runtimes = [load_runtime("torch", "default"), load_runtime("onnx", default_onnx)]
    with pytest.raises(InputError, match=r"uint8 / 127\.5 - 1.*0\.\.255"):
        default_model.encode(torch.from_numpy(pixels))
    for runtime in runtimes:
        with pytest.raises(InputError, match=r"uint8 / 127\.5 - 1.*0\.\.255"):
            runtime.encode(pixels)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda x: (x + 1) / 2 * 4 - 2, "outside"),  # a doubled scale
        (lambda x: np.where(np.arange(x.size).reshape(x.shape) == 7, np.nan, x), "NaN"),
        (lambda x: np.where(np.arange(x.size).reshape(x.shape) == 7, -np.inf, x), "infinite"),
    ],
)
def test_encode_refuses_other_out_of_range_values(default_model, default_onnx, make, message):
    from gsq_deploy.runtimes import load_runtime

    pixels = make(uint8_to_float(photo())[None]).astype(np.float32)
    with pytest.raises(InputError, match=message):
        default_model.encode(torch.from_numpy(pixels))
    with pytest.raises(InputError, match=message):
        load_runtime("onnx", default_onnx).encode(pixels)


def test_rounding_outside_the_range_is_accepted_and_training_is_not_checked(default_model):
    clean = torch.from_numpy(uint8_to_float(photo())[None])
    clean[0, 0, 0, 0] = 1.0
    pixels = clean.clone()
    pixels[0, 0, 0, 0] = 1.0 + 5e-4  # fp16-sized rounding of that white pixel
    with torch.no_grad():
        rounded, exact = default_model.encode(pixels), default_model.encode(clean)
    assert rounded.shape == exact.shape
    assert (rounded == exact).float().mean() > 0.99  # one pixel 5e-4 off moves at most a near-tie
    augmented = pixels * 1.05  # a training augmentation may step outside [-1, 1]
    with pytest.raises(InputError, match="outside"):
        default_model.encode(augmented)  # refused at inference...
    default_model.train()
    try:
        with torch.no_grad():
            out = default_model(augmented)  # ...not in training
    finally:
        default_model.eval()
    assert out.reconstruction.shape == augmented.shape and torch.isfinite(out.reconstruction).all()
    assert out.codes.shape == exact.shape


# -- 1x1 grids --------------------------------------------------------------------------------------------
def test_one_token_grid_is_refused_by_eager_decode(default_model):
    codes = torch.zeros(1, 1, 1, default_model.num_group, dtype=torch.long)
    with pytest.raises(InputError, match="at least 2 tokens"):
        default_model.decode(codes)
    assert torch.isfinite(default_model.decode(torch.zeros(1, 1, 2, default_model.num_group, dtype=torch.long))).all()
    with pytest.raises(InputError, match="empty"):
        default_model.decode(torch.zeros(1, 0, 3, default_model.num_group, dtype=torch.long))


# -- the CLIs -------------------------------------------------------------------------------------------------
def test_roundtrip_refuses_an_8x8_image_instead_of_writing_black(tmp_path):
    source = save(tmp_path / "in" / "tiny.png", photo(8, 8))
    result = run_cli(["-m", "gsq_core", "roundtrip", "--out", str(tmp_path / "out"), str(source)])
    assert_one_line_error(result, "tiny.png", "1x1 token grid", "--resize")
    assert not (tmp_path / "out").exists()


def test_roundtrip_refuses_two_inputs_with_one_output_name_before_writing(tmp_path):
    first = save(tmp_path / "a" / "x.png", photo())
    second = save(tmp_path / "b" / "x.png", photo()[::-1].copy())
    third = save(tmp_path / "a" / "x.jpg", photo())
    for inputs in ([first, second], [first, third]):
        result = run_cli(["-m", "gsq_core", "roundtrip", "--out", str(tmp_path / "out"), *map(str, inputs)])
        assert_one_line_error(result, "would both be written to")
    assert not (tmp_path / "out").exists()


def test_roundtrip_checks_every_output_before_writing_the_first(tmp_path):
    first, second = save(tmp_path / "in" / "p.png", photo()), save(tmp_path / "in" / "q.png", photo())
    out = tmp_path / "out"
    save(out / "q.png", photo(16, 16))  # the second output exists already
    result = run_cli(["-m", "gsq_core", "roundtrip", "--out", str(out), str(first), str(second)])
    assert_one_line_error(result, "q.png", "--overwrite")
    assert files_under(out) == {"q.png"}


def test_roundtrip_refuses_an_output_that_is_its_input_even_with_overwrite(tmp_path):
    source = save(tmp_path / "p.png", photo())
    before = source.read_bytes()
    result = run_cli(["-m", "gsq_core", "roundtrip", "--overwrite", "--out", str(tmp_path), str(source)])
    assert_one_line_error(result, "is also an input")
    assert source.read_bytes() == before


def test_every_cli_answers_a_bomb_in_one_line(tmp_path, default_onnx):
    bomb = tmp_path / "images" / "bomb.png"
    bomb.parent.mkdir()
    bomb.write_bytes(png_header_only(100_000, 100_000))
    calls = {
        "encode": ["-m", "runtimes.onnx", "encode", "--model", str(default_onnx), "--output", str(tmp_path / "t.npz"),
                   str(bomb)],
        "roundtrip": ["-m", "gsq_core", "roundtrip", "--out", str(tmp_path / "rt"), str(bomb)],
        "compare": ["benchmarks/compare.py", "--ckpt", "default", "--images", str(bomb), "--backends", "torch",
                    "--out", str(tmp_path / "cmp")],
        "export": ["-m", "exporters", "--ckpt", "default", "--out", str(tmp_path / "exp"), "--graphs", "tokenize",
                   "--calib-images", str(bomb.parent)],
    }
    for name, args in calls.items():
        result = run_cli(args)
        assert_one_line_error(result, "bomb.png", "pixels")
        assert not any((tmp_path / out).exists() for out in ("t.npz", "rt", "exp")), name
    assert not (tmp_path / "cmp" / "report.json").exists()


def test_encode_cli_scales_16bit_and_notes_it(tmp_path, default_onnx):
    grey = grey_photo()
    eight, sixteen = save(tmp_path / "g8.png", grey), save(tmp_path / "g16.png", grey.astype(np.uint16) * 257)
    result = run_cli(["-m", "runtimes.onnx", "encode", "--model", str(default_onnx), "--output",
                      str(tmp_path / "t.npz"), str(eight), str(sixteen)])
    assert result.returncode == 0, result.stderr
    assert "16-bit greyscale" in result.stderr
    with np.load(tmp_path / "t.npz") as tokens:
        np.testing.assert_array_equal(tokens["codes"][0], tokens["codes"][1])
