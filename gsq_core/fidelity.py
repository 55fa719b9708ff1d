"""Fidelity measures shared by export validation, runtimes and benchmarks (numpy only, float64).

A token is an *optimal choice* when its code's score, computed in float64 from the latent, is within a
small gap of the best code's score. Scores: cosine similarity for l2-normalised lookup, the dot product
for IBQ without normalisation, minus the squared distance otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LookupSpec:
    """What a quantizer's lookup computes, enough to re-score tokens without torch."""

    codebook: np.ndarray  # raw codebook [V, d]
    num_group: int
    normalization: str  # "l2" | "l1" | "clip" | "none"
    uses_distance: bool  # argmin of squared distance (True) or argmax of the dot product (False)
    has_group_axis: bool = True


def _normalize(x: np.ndarray, normalization: str) -> np.ndarray:
    if normalization == "l2":
        return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
    if normalization == "l1":
        return x / np.maximum(np.abs(x).sum(axis=-1, keepdims=True), 1e-12)
    if normalization == "clip":
        return np.clip(x, -1.0, 1.0)
    return x


def latent_to_vectors(latent: np.ndarray, num_group: int) -> np.ndarray:
    """[B, D, h, w] -> [B*h*w*G, d] in token order (channel c = g * d + k)."""
    latent = np.asarray(latent, dtype=np.float64)
    batch, dim, height, width = latent.shape
    return latent.transpose(0, 2, 3, 1).reshape(batch * height * width * num_group, dim // num_group)


def score_gaps(latent: np.ndarray, codes: np.ndarray, spec: LookupSpec) -> np.ndarray:
    """For every token: best score minus the chosen code's score (>= 0), float64, flat [N*G]."""
    return vector_score_gaps(latent_to_vectors(latent, spec.num_group), codes, spec)


# Float64 scores held at once by vector_score_gaps (rows x V): 64 MiB, whatever the codebook size.
SCORE_BLOCK_BYTES = 64 * 2**20


def vector_score_gaps(vectors: np.ndarray, codes: np.ndarray, spec: LookupSpec) -> np.ndarray:
    """Best score minus the chosen code's score (>= 0), float64, for each row of vectors [N, d]."""
    vectors = _normalize(np.asarray(vectors, dtype=np.float64), spec.normalization)
    codebook = _normalize(spec.codebook.astype(np.float64), spec.normalization)
    chosen = np.asarray(codes).reshape(-1).astype(np.int64)
    if chosen.shape[0] != vectors.shape[0]:
        raise ValueError(f"{chosen.shape[0]} tokens for {vectors.shape[0]} latent vectors")
    code_norms = (codebook**2).sum(axis=1)
    block_rows = max(1, SCORE_BLOCK_BYTES // (8 * max(1, codebook.shape[0])))
    gaps = np.empty(vectors.shape[0], dtype=np.float64)
    for start in range(0, vectors.shape[0], block_rows):
        rows = vectors[start : start + block_rows]
        scores = rows @ codebook.T
        if spec.uses_distance and spec.normalization != "l2":
            scores = 2.0 * scores - code_norms - (rows**2).sum(axis=1, keepdims=True)  # minus squared distance
        picked = scores[np.arange(rows.shape[0]), chosen[start : start + block_rows]]
        gaps[start : start + block_rows] = scores.max(axis=1) - picked
    return gaps


def psnr(reference: np.ndarray, test: np.ndarray, data_range: float = 2.0) -> float:
    """Peak signal-to-noise ratio in dB for images in [-1, 1] (data_range 2); inf when identical."""
    mse = float(np.mean((np.asarray(reference, np.float64) - np.asarray(test, np.float64)) ** 2))
    return float("inf") if mse == 0.0 else 10.0 * np.log10(data_range**2 / mse)


def codebook_usage(codes: np.ndarray, num_embed: int) -> float:
    """Share of the codebook that appears at least once in codes (0..1)."""
    return histogram_usage(np.bincount(np.asarray(codes).reshape(-1).astype(np.int64), minlength=num_embed))


def histogram_usage(counts: np.ndarray) -> float:
    """Share of the codes of a histogram of code counts that occur at least once (0..1)."""
    counts = np.asarray(counts)
    return float((counts > 0).sum()) / counts.size


def codebook_perplexity(codes: np.ndarray, num_embed: int) -> float:
    """exp(entropy) of the token histogram: the effective number of codes in use."""
    return histogram_perplexity(np.bincount(np.asarray(codes).reshape(-1).astype(np.int64), minlength=num_embed))


def histogram_perplexity(counts: np.ndarray) -> float:
    """exp(entropy) of a histogram of code counts (1.0 for an empty one)."""
    counts = np.asarray(counts, dtype=np.float64)
    if counts.sum() <= 0:
        return 1.0
    probs = counts[counts > 0] / counts.sum()
    return float(np.exp(-(probs * np.log(probs)).sum()))
