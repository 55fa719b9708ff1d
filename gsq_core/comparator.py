"""The one comparator: a backend's outputs against a reference (eager fp32, or an exact lookup).

Export validation (exporters.validation), the backend comparison (benchmarks/compare.py) and the
lookup sweep (benchmarks/lookup_sweep.py) all measure with this class, so a number means the same
thing in every report. numpy only, plus scikit-image for SSIM; no torch.

    comparator = Comparator(spec)                      # spec: gsq_core.fidelity.LookupSpec
    comparator.add_latent(latent, eager_latent)        # any of these, over any number of batches
    comparator.add_codes(codes, eager_codes, eager_latent)
    comparator.add_images(recon, eager_recon)
    comparator.add_quality(recon, input_images)
    report = comparator.report()                       # plain dict, JSON-ready

Measures (DESIGN.md, "Fidelity, measured the same way everywhere"):
- token agreement: share of tokens identical to the reference;
- score gaps, float64 from the reference latent: how far each chosen code's score is below the best
  code's (0 for an optimal choice); the margin of a disagreement is its gap. Disagreements with a
  margin below `near_tie_margin` are rounding on near-ties, the others are flagged;
- latent: max |latent - reference| and that error relative to the reference's max |value|;
- images against the reference images: the lowest per-image PSNR (None when identical), max abs error;
- quality against the real input images: mean PSNR (on [-1, 1]) and SSIM (on the 8-bit images);
- codebook usage (share of codes used) and perplexity (exp of the token entropy).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .fidelity import (
    LookupSpec,
    histogram_perplexity,
    histogram_usage,
    latent_to_vectors,
    psnr,
    score_gaps,
    vector_score_gaps,
)

NEAR_TIE_MARGIN = 1e-5  # score gaps below this are fp32 rounding on near-ties (DESIGN.md)
LARGEST_MARGINS = 10  # how many of the largest disagreement margins a report lists
SSIM_WINDOW = 7  # scikit-image's default window side


class Mismatch(ValueError):
    """An output that cannot be compared with the reference at all (shape, dtype, id range)."""


def ssim(reference: np.ndarray, test: np.ndarray) -> float:
    """Mean SSIM of two images [3, H, W] in [-1, 1], on their 8-bit versions (the images as written
    to files; gsq_core.images.float_to_uint8), by scikit-image with data range 255 and a 7x7 window
    (the largest odd window that fits a smaller image). The one SSIM of this project."""
    from skimage.metrics import structural_similarity

    from .images import float_to_uint8

    reference, test = np.asarray(reference), np.asarray(test)
    if reference.shape != test.shape or reference.ndim != 3:
        raise Mismatch(f"SSIM needs two [3, H, W] images of one shape, got {reference.shape} and {test.shape}")
    side = min(reference.shape[1:])
    window = SSIM_WINDOW if side >= SSIM_WINDOW else (side if side % 2 else side - 1)
    if window < 3:
        raise Mismatch(f"SSIM needs images of at least 3x3 pixels, got {reference.shape[1]}x{reference.shape[2]}")
    pair = float_to_uint8(reference), float_to_uint8(test)  # [H, W, C]
    return float(structural_similarity(*pair, channel_axis=2, data_range=255, win_size=window))


@dataclass
class Comparator:
    """Running comparison of one backend's outputs with the reference, over any number of batches."""

    spec: LookupSpec
    near_tie_margin: float = NEAR_TIE_MARGIN
    # codes
    tokens: int = 0
    agreeing: int = 0
    max_score_gap: float | None = None  # over every token (None when only disagreements were scored)
    margins: list[float] = field(default_factory=list)  # score gap of each disagreeing token
    code_counts: np.ndarray | None = None  # histogram of the codes seen, for usage and perplexity
    # latent
    latent_max_abs_error: float | None = None
    latent_max_abs: float = 0.0
    # images against the reference
    images_min_psnr_db: float | None = None  # +inf while every image so far is identical
    images_max_abs_error: float = 0.0
    images_finite: bool = True
    # quality against the input images
    input_psnrs_db: list[float] = field(default_factory=list)
    input_ssims: list[float] = field(default_factory=list)

    # -- adding outputs ---------------------------------------------------------------------------
    def add_codes(
        self, codes: np.ndarray, reference: np.ndarray, latent: np.ndarray, every_token: bool = True
    ) -> None:
        """Token ids against the reference's, scored from the reference latent [B, D, h, w].

        every_token: also score the tokens that agree (max_score_gap: is every token an optimal
        choice?); False scores the disagreements only (their margins), for very large codebooks.
        """
        codes, reference = np.asarray(codes), np.asarray(reference)
        num_embed = self.spec.codebook.shape[0]
        if codes.shape != reference.shape or not np.issubdtype(codes.dtype, np.integer):
            raise Mismatch(f"codes {codes.dtype}{list(codes.shape)} differ from the reference's {list(reference.shape)}")
        if codes.size and (codes.min() < 0 or codes.max() >= num_embed):
            raise Mismatch(f"token ids outside [0, {num_embed})")
        flat, flat_reference = codes.reshape(-1).astype(np.int64), reference.reshape(-1)
        differing = flat != flat_reference
        self.tokens += flat.size
        self.agreeing += int(flat.size - differing.sum())
        if every_token:
            gaps = score_gaps(latent, flat, self.spec)
            largest = float(gaps.max(initial=0.0))
            self.max_score_gap = largest if self.max_score_gap is None else max(self.max_score_gap, largest)
            self.margins.extend(gaps[differing].tolist())
        elif differing.any():
            vectors = latent_to_vectors(latent, self.spec.num_group)[differing]
            self.margins.extend(vector_score_gaps(vectors, flat[differing], self.spec).tolist())
        counts = np.bincount(flat, minlength=num_embed)
        self.code_counts = counts if self.code_counts is None else self.code_counts + counts

    def add_latent(self, latent: np.ndarray, reference: np.ndarray) -> None:
        """A latent [B, D, h, w] against the reference latent."""
        latent, reference = np.asarray(latent), np.asarray(reference)
        if latent.shape != reference.shape:
            raise Mismatch(f"latent shape {list(latent.shape)} differs from the reference {list(reference.shape)}")
        error = float(np.abs(latent.astype(np.float64) - reference).max(initial=0.0))
        if not math.isfinite(error):
            error = math.inf  # NaN in the output: the worst error, not a comparison that passes
        self.latent_max_abs_error = error if self.latent_max_abs_error is None else max(self.latent_max_abs_error, error)
        self.latent_max_abs = max(self.latent_max_abs, float(np.abs(reference).max(initial=0.0)))

    def add_images(self, images: np.ndarray, reference: np.ndarray) -> None:
        """Reconstructions [B, C, H, W] against the reference's reconstructions of the same codes."""
        images, reference = np.asarray(images), np.asarray(reference)
        if images.shape != reference.shape:
            raise Mismatch(f"image shape {list(images.shape)} differs from the reference {list(reference.shape)}")
        if not np.isfinite(images).all():
            self.images_finite = False
            return
        lowest = min((psnr(r, t) for r, t in zip(reference, images)), default=math.inf)
        self.images_min_psnr_db = lowest if self.images_min_psnr_db is None else min(self.images_min_psnr_db, lowest)
        error = float(np.abs(images.astype(np.float64) - reference).max(initial=0.0))
        self.images_max_abs_error = max(self.images_max_abs_error, error)

    def add_quality(self, images: np.ndarray, inputs: np.ndarray) -> None:
        """Reconstructions [B, C, H, W] against the real input images: PSNR and SSIM per image."""
        images, inputs = np.asarray(images), np.asarray(inputs)
        if images.shape != inputs.shape:
            raise Mismatch(f"image shape {list(images.shape)} differs from the input {list(inputs.shape)}")
        for image, original in zip(np.clip(images, -1.0, 1.0), inputs):
            self.input_psnrs_db.append(psnr(original, image))
            self.input_ssims.append(ssim(original, image))

    # -- report -----------------------------------------------------------------------------------
    @property
    def token_agreement(self) -> float | None:
        return self.agreeing / self.tokens if self.tokens else None

    @property
    def latent_relative_error(self) -> float | None:
        if self.latent_max_abs_error is None:
            return None
        if self.latent_max_abs == 0.0:
            return 0.0 if self.latent_max_abs_error == 0.0 else math.inf
        return self.latent_max_abs_error / self.latent_max_abs

    def report(self) -> dict[str, Any]:
        """What was measured, as a JSON-ready dict (keys only for the kinds of output added)."""
        result: dict[str, Any] = {}
        if self.tokens:
            margins = np.sort(np.asarray(self.margins, dtype=np.float64))[::-1]
            flagged = int((margins >= self.near_tie_margin).sum())
            counts = self.code_counts if self.code_counts is not None else np.zeros(1, np.int64)
            result.update(
                tokens=self.tokens,
                token_agreement=self.token_agreement,
                max_score_gap=self.max_score_gap,
                disagreements=int(margins.size),
                near_tie_disagreements=int(margins.size - flagged),
                flagged_disagreements=flagged,
                max_disagreement_margin=float(margins[0]) if margins.size else 0.0,
                median_disagreement_margin=float(np.median(margins)) if margins.size else 0.0,
                largest_disagreement_margins=[float(value) for value in margins[:LARGEST_MARGINS]],
                codebook_usage=histogram_usage(counts),
                codebook_perplexity=histogram_perplexity(counts),
            )
        if self.latent_max_abs_error is not None:
            result.update(
                latent_max_abs_error=_json_number(self.latent_max_abs_error),
                latent_max_abs=self.latent_max_abs,
                latent_relative_error=_json_number(self.latent_relative_error),
            )
        if self.images_min_psnr_db is not None or not self.images_finite:
            lowest = self.images_min_psnr_db
            result.update(
                # JSON has no infinity: identical reconstructions report None (and say so).
                recon_psnr_db=None if lowest is None or math.isinf(lowest) else lowest,
                recon_identical=self.images_finite and lowest is not None and math.isinf(lowest),
                recon_max_abs_error=self.images_max_abs_error,
                recon_finite=self.images_finite,
            )
        if self.input_psnrs_db:
            finite = [value for value in self.input_psnrs_db if math.isfinite(value)]
            result.update(
                psnr_vs_input_db=float(np.mean(finite)) if finite else None,
                ssim_vs_input=float(np.mean(self.input_ssims)),
            )
        return result


def _json_number(value: float | None) -> float | None:
    """JSON has no infinity or NaN: None stands for them (an output with NaN, or no scale)."""
    return None if value is None or not math.isfinite(value) else value
