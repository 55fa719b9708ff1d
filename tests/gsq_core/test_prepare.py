"""gsq_core.prepare: the one ADM centre crop (square for gsq-tokenize and validation, H x W for export
calibration) and the sample photos."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from tests.conftest import gradient

from gsq_core.errors import InputError
from gsq_core.prepare import adm_center_crop, sample_photo, sample_photos


@pytest.mark.parametrize(
    "height, width, target, halvings",
    [
        (300, 451, (64, 96), 2),  # 75 x 112 after two halvings; the width binds
        (300, 451, (40, 160), 1),  # a wide target: 225 < 2 * 160 stops the halving
        (97, 61, (48, 20), 1),  # a tall target: 48 x 30, the height binds
        (64, 64, (80, 40), 0),  # upscaling
    ],
)
def test_rectangular_crop_follows_the_square_crops_steps(height, width, target, halvings):
    image = gradient(height, width)
    expected = image
    for _ in range(halvings):  # written out independently of the implementation's loop
        expected = expected.resize((expected.width // 2, expected.height // 2), resample=Image.Resampling.BOX)
    assert expected.height < 2 * target[0] or expected.width < 2 * target[1]
    scale = max(target[0] / expected.height, target[1] / expected.width)  # the smallest scale covering the target
    expected = expected.resize((round(expected.width * scale), round(expected.height * scale)), Image.Resampling.BICUBIC)
    top, left = (expected.height - target[0]) // 2, (expected.width - target[1]) // 2
    expected = np.asarray(expected)[top : top + target[0], left : left + target[1]]
    cropped = adm_center_crop(image, target)
    assert cropped.shape == (*target, 3) and cropped.dtype == np.uint8
    np.testing.assert_array_equal(cropped, expected)


@pytest.mark.parametrize("height, width, size", [(300, 451, 64), (70, 333, 64), (512, 512, 256), (33, 20, 48)])
def test_a_square_target_given_as_a_pair_is_the_square_crop(height, width, size):
    image = gradient(height, width)
    np.testing.assert_array_equal(adm_center_crop(image, (size, size)), adm_center_crop(image, size))


@pytest.mark.parametrize("size", [0, -3, (0, 8), (8, -1)])
def test_crop_sizes_must_be_positive(size):
    with pytest.raises(InputError, match="must be positive"):
        adm_center_crop(gradient(16, 16), size)


def test_sample_photos_are_uint8_rgb():
    import skimage.data

    astronaut = sample_photo("astronaut")
    np.testing.assert_array_equal(astronaut, skimage.data.astronaut())
    camera = sample_photo("camera")  # greyscale: repeated to three channels
    assert camera.shape == (*skimage.data.camera().shape, 3) and camera.dtype == np.uint8
    for channel in range(3):
        np.testing.assert_array_equal(camera[..., channel], skimage.data.camera())
    left, right = sample_photo("motorcycle_left"), sample_photo("motorcycle_right")
    np.testing.assert_array_equal(left, skimage.data.stereo_motorcycle()[0])
    assert left.shape == right.shape and not np.array_equal(left, right)
    assert [name for name, _ in sample_photos(("coffee", "rocket"))] == ["coffee", "rocket"]
    with pytest.raises(ValueError, match="no sample photo named 'nonsense'"):
        sample_photo("nonsense")


def test_training_validation_and_export_calibration_use_the_tokenizers_crop(tmp_path):
    """One crop: what training validates on, what export validation feeds, what gsq-tokenize tokenizes."""
    from gsq_deploy.exporters.calibration import fit_to_size
    from gsq_dataset.preprocess import model_input, preprocess_file
    from gsq_deploy.train.validation import load_validation_images

    paths = []
    for name, (height, width) in {"wide.png": (300, 451), "small.png": (50, 70)}.items():
        paths.append(tmp_path / name)
        gradient(height, width).save(paths[-1])
    images, names = load_validation_images(paths, 64)
    assert names == [str(p) for p in paths]
    tokenized = model_input(np.stack([preprocess_file(p, 64) for p in paths]))
    np.testing.assert_array_equal(images.numpy(), tokenized)
    calibration = np.stack([fit_to_size(np.asarray(Image.open(p)), 64, 64) for p in paths])
    np.testing.assert_array_equal(calibration, tokenized)
