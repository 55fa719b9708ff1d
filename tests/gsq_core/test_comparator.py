"""The one comparator (gsq_core.comparator): each measure on inputs whose answer is known."""

from __future__ import annotations

import math

import numpy as np
import pytest
from skimage.metrics import structural_similarity

from gsq_core.comparator import Comparator, Mismatch, ssim
from gsq_core.fidelity import (
    LookupSpec,
    codebook_perplexity,
    codebook_usage,
    latent_to_vectors,
    psnr,
    score_gaps,
)
from gsq_core.images import float_to_uint8, uint8_to_float
from gsq_core.prepare import sample_photo


def photo(size: int = 48) -> np.ndarray:
    return uint8_to_float(np.ascontiguousarray(sample_photo("astronaut")[100 : 100 + size, 180 : 180 + size]))


def lookup_problem(seed: int = 0) -> tuple[LookupSpec, np.ndarray, np.ndarray]:
    """A small l2 GSQ lookup (V=32, G=2, d=3), a latent [2, 6, 3, 4] and its best codes [2, 3, 4, 2]."""
    rng = np.random.default_rng(seed)
    spec = LookupSpec(codebook=rng.normal(size=(32, 3)), num_group=2, normalization="l2", uses_distance=True)
    latent = rng.normal(size=(2, 6, 3, 4))
    vectors = latent.transpose(0, 2, 3, 1).reshape(-1, 3)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    codebook = spec.codebook / np.linalg.norm(spec.codebook, axis=1, keepdims=True)
    best = (vectors @ codebook.T).argmax(axis=1).reshape(2, 3, 4, 2)
    return spec, latent, best


def test_ssim_is_scikit_images_on_the_8_bit_images():
    image = photo()
    noisy = np.clip(image + np.random.default_rng(0).normal(scale=0.1, size=image.shape), -1, 1)
    assert ssim(image, image) == pytest.approx(1.0)
    expected = structural_similarity(float_to_uint8(image), float_to_uint8(noisy), channel_axis=2, data_range=255)
    assert ssim(image, noisy) == pytest.approx(expected) and 0.2 < expected < 0.95
    assert ssim(image[:, :5, :5], noisy[:, :5, :5]) < 1.0  # a window that fits a 5x5 image
    with pytest.raises(Mismatch):
        ssim(image, noisy[:, :40])


@pytest.mark.parametrize("height, width, window", [(7, 9, 7), (6, 20, 5), (9, 4, 3), (3, 3, 3)])
def test_ssim_window_is_the_largest_odd_one_that_fits(height, width, window):
    image = photo()[:, :height, :width]
    noisy = np.clip(image + np.random.default_rng(2).normal(scale=0.2, size=image.shape), -1, 1)
    expected = structural_similarity(
        float_to_uint8(image), float_to_uint8(noisy), channel_axis=2, data_range=255, win_size=window
    )
    assert ssim(image, noisy) == pytest.approx(expected)


def test_ssim_refuses_what_it_cannot_compare():
    image = photo()
    with pytest.raises(Mismatch, match="at least 3x3 pixels, got 2x8"):
        ssim(image[:, :2, :8], image[:, :2, :8])
    with pytest.raises(Mismatch, match=r"two \[3, H, W\] images of one shape"):
        ssim(image[None], image[None])


def cosine_gaps(spec: LookupSpec, latent: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Best cosine minus the chosen code's cosine, per token, written out here (not score_gaps)."""
    vectors = latent.transpose(0, 2, 3, 1).reshape(-1, 3)
    vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    cosines = vectors @ (spec.codebook / np.linalg.norm(spec.codebook, axis=1, keepdims=True)).T
    return cosines.max(axis=1) - cosines[np.arange(len(cosines)), codes.reshape(-1)]


def test_score_gaps_are_the_cosine_gaps():
    spec, latent, best = lookup_problem()
    worst = np.argmin(
        latent_to_vectors(latent, 2) @ spec.codebook.T / np.linalg.norm(spec.codebook, axis=1), axis=1
    ).reshape(best.shape)
    for codes in (best, np.zeros_like(best), worst):
        np.testing.assert_allclose(score_gaps(latent, codes, spec), cosine_gaps(spec, latent, codes), atol=1e-12)
    assert score_gaps(latent, worst, spec).min() > 0.1  # the worst code of every token is far from the best


def test_token_agreement_and_margins_of_disagreements():
    spec, latent, best = lookup_problem()
    gaps = cosine_gaps(spec, latent, np.zeros_like(best))  # every token replaced by code 0
    codes = best.copy()
    flat = codes.reshape(-1)
    flipped = np.arange(0, flat.size, 5)  # every fifth token: code 0 instead of the best one
    flat[flipped] = 0
    differing = flat != best.reshape(-1)
    comparator = Comparator(spec)
    comparator.add_codes(codes, best, latent)
    report = comparator.report()
    assert report["tokens"] == best.size
    assert report["token_agreement"] == pytest.approx(1 - differing.sum() / best.size)
    assert report["disagreements"] == differing.sum()
    assert report["max_disagreement_margin"] == pytest.approx(gaps[differing].max())
    assert report["max_score_gap"] == pytest.approx(gaps[differing].max())
    assert report["largest_disagreement_margins"] == pytest.approx(sorted(gaps[differing], reverse=True)[:10])
    assert report["flagged_disagreements"] == (gaps[differing] >= 1e-5).sum()
    only_disagreements = Comparator(spec)
    only_disagreements.add_codes(codes, best, latent, every_token=False)
    assert only_disagreements.max_score_gap is None
    assert sorted(only_disagreements.margins) == pytest.approx(sorted(comparator.margins))


def test_the_best_codes_have_no_gap_and_full_agreement():
    spec, latent, best = lookup_problem(1)
    comparator = Comparator(spec)
    comparator.add_codes(best, best, latent)
    report = comparator.report()
    assert report["token_agreement"] == 1.0 and report["disagreements"] == 0
    assert report["max_score_gap"] <= 1e-12


def test_codes_that_cannot_be_compared_are_refused():
    spec, latent, best = lookup_problem()
    with pytest.raises(Mismatch, match="differ"):
        Comparator(spec).add_codes(best[:1], best, latent)
    with pytest.raises(Mismatch, match="outside"):
        Comparator(spec).add_codes(np.full_like(best, 32), best, latent)


def test_batches_accumulate_tokens_agreement_and_the_largest_gap():
    """Several add_codes calls report over all of them: a later clean batch neither resets the
    counts nor hides an earlier non-optimal token, and a later worse gap replaces a smaller one."""
    spec, latent, best = lookup_problem()
    gaps = cosine_gaps(spec, latent, np.zeros_like(best))
    worst = int(gaps.argmax())
    flawed = best.copy()
    flawed.reshape(-1)[worst] = 0  # one token replaced by code 0, the largest gap of all
    comparator = Comparator(spec)
    comparator.add_codes(flawed, best, latent)
    comparator.add_codes(best, best, latent)
    report = comparator.report()
    assert report["tokens"] == 2 * best.size
    assert report["token_agreement"] == pytest.approx(1 - 1 / (2 * best.size))
    assert report["max_score_gap"] == pytest.approx(gaps[worst])
    growing = Comparator(spec)
    growing.add_codes(best, best, latent)
    growing.add_codes(flawed, best, latent)
    assert growing.report()["max_score_gap"] == pytest.approx(gaps[worst])


def test_usage_and_perplexity_count_the_codes_seen():
    spec, latent, best = lookup_problem()
    codes = np.zeros_like(best)
    codes.reshape(-1)[: codes.size // 2] = 1  # half code 0, half code 1
    comparator = Comparator(spec)
    comparator.add_codes(codes, best, latent, every_token=False)
    report = comparator.report()
    assert report["codebook_usage"] == pytest.approx(2 / 32)
    assert report["codebook_perplexity"] == pytest.approx(2.0)
    comparator.add_codes(np.arange(best.size).reshape(best.shape) % 32, best, latent, every_token=False)
    counts = np.bincount(np.concatenate([codes.reshape(-1), np.arange(best.size) % 32]), minlength=32)
    probabilities = counts / counts.sum()
    assert comparator.report()["codebook_usage"] == 1.0  # every code seen over the two batches
    assert comparator.report()["codebook_perplexity"] == pytest.approx(np.exp(-(probabilities * np.log(probabilities)).sum()))


@pytest.mark.parametrize(
    "codes, usage, perplexity",
    [
        ([5, 5, 5, 5], 1 / 16, 1.0),
        ([0, 1, 2, 3], 4 / 16, 4.0),
        ([0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7], 8 / 16, 8.0),
        ([0, 0, 0, 1], 2 / 16, math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))),
        (list(range(16)), 1.0, 16.0),
    ],
)
def test_usage_and_perplexity_of_known_histograms(codes, usage, perplexity):
    assert codebook_usage(np.array(codes), 16) == pytest.approx(usage)
    assert codebook_perplexity(np.array(codes), 16) == pytest.approx(perplexity)


def test_usage_and_perplexity_take_token_grids_of_any_shape():
    grid = np.array([[[[0, 1], [1, 3]], [[3, 3], [7, 1]]]])  # [B, h, w, G] as the tokenizers return them
    flat = grid.reshape(-1)
    assert codebook_usage(grid, 16) == codebook_usage(flat, 16) == pytest.approx(4 / 16)
    assert codebook_perplexity(grid, 16) == pytest.approx(codebook_perplexity(flat, 16))


def test_psnr_of_known_errors():
    reference = np.zeros((3, 8, 8))
    assert psnr(reference, reference + 0.1) == pytest.approx(10 * math.log10(4 / 0.01))  # 26.02 dB
    assert psnr(reference, reference - 0.02) == pytest.approx(10 * math.log10(4 / 0.0004))  # 40 dB
    assert psnr(reference, reference + 0.1, data_range=1.0) == pytest.approx(20.0)
    assert math.isinf(psnr(reference, reference))


def test_latent_error_is_relative_to_the_reference_and_nan_is_infinite():
    spec, _, _ = lookup_problem()
    reference = np.linspace(-2, 2, 24).reshape(1, 6, 2, 2)
    comparator = Comparator(spec)
    comparator.add_latent(reference * (1 + 1e-3), reference)
    assert comparator.latent_max_abs_error == pytest.approx(2e-3)
    assert comparator.latent_relative_error == pytest.approx(1e-3)
    broken = reference.copy()
    broken[0, 0, 0, 0] = np.nan
    comparator.add_latent(broken, reference)
    assert math.isinf(comparator.latent_relative_error)
    assert comparator.report()["latent_relative_error"] is None  # JSON has no infinity


def test_images_report_the_worst_image_and_identical_ones():
    spec, _, _ = lookup_problem()
    image = photo()[None]
    noisy = image + 0.05 * np.random.default_rng(1).normal(size=image.shape)
    same = Comparator(spec)
    same.add_images(np.concatenate([image, image]), np.concatenate([image, image]))
    assert same.report()["recon_identical"] and same.report()["recon_psnr_db"] is None
    mixed = Comparator(spec)
    mixed.add_images(np.concatenate([image, noisy]), np.concatenate([image, image]))
    assert mixed.report()["recon_psnr_db"] == pytest.approx(psnr(image[0], noisy[0]))
    assert not mixed.report()["recon_identical"]
    broken = Comparator(spec)
    broken.add_images(np.full_like(image, np.nan), image)
    assert broken.report()["recon_finite"] is False


def test_quality_against_the_input_clips_and_averages():
    spec, _, _ = lookup_problem()
    image = photo()[None]
    recon = image * 1.5  # out of range: clipped before PSNR / SSIM
    comparator = Comparator(spec)
    comparator.add_quality(recon, image)
    clipped = np.clip(recon[0], -1, 1)
    assert comparator.report()["psnr_vs_input_db"] == pytest.approx(psnr(image[0], clipped))
    assert comparator.report()["ssim_vs_input"] == pytest.approx(ssim(image[0], clipped))


# -- score gaps of every lookup kind, written out by hand ------------------------------------------------
def hand_gaps(vectors: np.ndarray, codebook: np.ndarray, codes: np.ndarray, normalization: str, distance: bool):
    """Best score minus the chosen code's score, each score computed plainly per vector and code:
    the cosine for l2 (the same argmax as the distance on the sphere), else minus the squared
    distance or the dot product."""
    def normalized(rows):
        if normalization == "l2":
            return rows / np.linalg.norm(rows, axis=1, keepdims=True)
        if normalization == "l1":
            return rows / np.abs(rows).sum(axis=1, keepdims=True)
        if normalization == "clip":
            return np.clip(rows, -1, 1)
        return rows

    x, c = normalized(vectors), normalized(codebook)
    gaps = []
    for row, code in zip(x, codes):
        scores = [-((row - entry) ** 2).sum() if distance and normalization != "l2" else (row * entry).sum() for entry in c]
        gaps.append(max(scores) - scores[code])
    return np.array(gaps)


@pytest.mark.parametrize(
    "normalization, distance",
    [("l2", True), ("l2", False), ("l1", True), ("clip", True), ("none", True), ("none", False)],
)
def test_score_gaps_of_every_lookup_kind(normalization, distance, monkeypatch):
    import gsq_core.fidelity as fidelity

    rng = np.random.default_rng(7)
    codebook = rng.normal(scale=0.8, size=(24, 4))
    spec = LookupSpec(codebook=codebook, num_group=2, normalization=normalization, uses_distance=distance)
    latent = rng.normal(scale=0.7, size=(1, 8, 3, 5))  # norms on both sides of 1
    vectors = latent.transpose(0, 2, 3, 1).reshape(-1, 4)
    codes = rng.integers(0, 24, size=(1, 3, 5, 2))
    expected = hand_gaps(vectors, codebook, codes.reshape(-1), normalization, distance)
    assert expected.max() > 0.05 and (expected >= 0).all()
    np.testing.assert_allclose(score_gaps(latent, codes, spec), expected, rtol=1e-9, atol=1e-12)
    monkeypatch.setattr(fidelity, "SCORE_BLOCK_BYTES", 8 * 24 * 4)  # blocks of 4 rows: 30 rows, a partial last block
    np.testing.assert_allclose(score_gaps(latent, codes, spec), expected, rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="29 tokens for 30 latent vectors"):
        score_gaps(latent, codes.reshape(-1)[:29], spec)


def test_latent_vectors_are_in_token_order():
    latent = np.arange(2 * 6 * 2 * 3, dtype=np.float64).reshape(2, 6, 2, 3)  # B=2, D=6 (G=3, d=2), h=2, w=3
    vectors = latent_to_vectors(latent, 3)
    assert vectors.shape == (2 * 2 * 3 * 3, 2) and vectors.dtype == np.float64
    # token (b, y, x, g) holds channels g*d .. g*d + d - 1 at that position
    b, y, x, g = 1, 1, 2, 2
    np.testing.assert_array_equal(vectors[((b * 2 + y) * 3 + x) * 3 + g], latent[b, 2 * g : 2 * g + 2, y, x])


# -- several batches: the worst of all, with known values --------------------------------------------------
def test_latents_and_reconstructions_report_the_worst_batch():
    spec, _, _ = lookup_problem()
    comparator = Comparator(spec)
    reference = np.full((1, 6, 2, 2), 2.0)
    off = reference.copy()
    off[0, 0, 0, 0] += 0.5  # the first batch is the worse one
    comparator.add_latent(off.astype(np.float32), reference)  # error 0.5, reference magnitude 2
    comparator.add_latent(reference + 0.25, np.full_like(reference, -3.0))  # 2.25 vs -3: error 5.25, magnitude 3
    report = comparator.report()
    assert report["latent_max_abs_error"] == pytest.approx(5.25)
    assert report["latent_max_abs"] == pytest.approx(3.0)
    assert report["latent_relative_error"] == pytest.approx(5.25 / 3.0)
    later_better = Comparator(spec)
    later_better.add_latent(off, reference)
    later_better.add_latent(reference, reference)
    assert later_better.report()["latent_max_abs_error"] == pytest.approx(0.5)
    with pytest.raises(Mismatch, match=r"latent shape \[1, 6, 2, 2\] differs from the reference \[1, 6, 2, 3\]"):
        later_better.add_latent(reference, np.zeros((1, 6, 2, 3)))

    images = photo()[None]
    blurred = images + np.float32(0.02)  # 0.02 everywhere: PSNR 10 log10(4 / 4e-4) = 40 dB
    worse = images - np.float32(0.1)
    recon = Comparator(spec)
    recon.add_images(worse, images)
    recon.add_images(blurred, images)
    result = recon.report()
    assert result["recon_psnr_db"] == pytest.approx(10 * math.log10(4 / 0.01), abs=1e-4)  # the worse batch
    assert result["recon_max_abs_error"] == pytest.approx(0.1, abs=1e-6)
    assert result["recon_finite"] and not result["recon_identical"]
    with pytest.raises(Mismatch, match=r"image shape \[1, 3, .*\] differs from the reference"):
        recon.add_images(images[:, :, :8], images)
    with pytest.raises(Mismatch, match=r"image shape .* differs from the input"):
        recon.add_quality(images[:, :, :8], images)


def test_disagreement_margins_split_into_near_ties_and_flagged():
    spec, latent, best = lookup_problem()
    comparator = Comparator(spec)
    comparator.tokens, comparator.agreeing = 10, 6  # what add_codes counts, set to known values
    comparator.margins.extend([3e-6, 1e-5, 2e-3, 1e-7])
    report = comparator.report()
    assert report["disagreements"] == 4
    assert report["flagged_disagreements"] == 2  # >= 1e-5 is flagged, the threshold included
    assert report["near_tie_disagreements"] == 2
    assert report["max_disagreement_margin"] == pytest.approx(2e-3)
    assert report["median_disagreement_margin"] == pytest.approx((3e-6 + 1e-5) / 2)
    clean = Comparator(spec)
    clean.add_codes(best, best, latent)
    assert (clean.report()["max_disagreement_margin"], clean.report()["median_disagreement_margin"]) == (0.0, 0.0)
