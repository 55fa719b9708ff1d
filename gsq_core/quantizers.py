"""Quantizers: GSQ (grouped spherical), plain VQ and IBQ, over one shared codebook each.

Layout: the latent channel axis D splits into G groups of d = D / G (channel c = g * d + k).
Tokens are int64 [B, h, w, G]; plain VQ has no group axis ([B, h, w]), as upstream.
Decoding always uses the raw (un-normalised) codebook rows, as upstream does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from .config import QuantizerConfig
from .errors import InputError
from .lookup import LookupTables, build_lookup_tables, nearest_codes, normalize_vectors

if TYPE_CHECKING:
    from .fidelity import LookupSpec


@dataclass
class QuantizerOutput:
    """Training-time result: straight-through quantized latent, tokens and the auxiliary loss."""

    quantized: torch.Tensor  # [B, D, h, w]
    codes: torch.Tensor  # [B, h, w, G] or [B, h, w] for plain VQ
    loss: torch.Tensor  # scalar
    scores: torch.Tensor | None = None  # [N*G, V] code scores when the loss needed them


class CodebookQuantizer(nn.Module):
    """Shared machinery: grouping, cached lookup constants, blocked deterministic lookup, decoding."""

    # Whether the inference lookup is argmin of squared distance (True) or argmax of the dot product.
    uses_distance = True

    def __init__(self, config: QuantizerConfig):
        super().__init__()
        config.validate()
        self.config = config
        self.num_embed = config.num_embed
        self.num_group = config.num_group
        self.group_dim = config.group_dim
        self.codebook = nn.Embedding(config.num_embed, config.group_dim)
        self._init_codebook()
        self._tables: LookupTables | None = None
        self._tables_key: tuple | None = None

    @property
    def has_group_axis(self) -> bool:
        """Plain VQ tokens have no group axis ([B,h,w]); the others are [B,h,w,G]."""
        return True

    @property
    def token_layout(self) -> str:
        """"BHWG" (tokens [B, h, w, G]) or "BHW" (tokens [B, h, w])."""
        return "BHWG" if self.has_group_axis else "BHW"

    @property
    def lookup_normalization(self) -> str:
        """What the lookup applies to latent groups and codebook rows first: "l2", "l1", "clip" or "none"."""
        return self.config.lookup_normalization

    def _init_codebook(self) -> None:
        weight = self.codebook.weight
        with torch.no_grad():
            if self.config.use_uniform_init:
                bound = 1.0 / self.num_embed if self.group_dim > 1 else 1.0
                nn.init.uniform_(weight, -bound, bound)
            else:
                sphere = torch.randn_like(weight)
                sphere = sphere / sphere.norm(dim=-1, keepdim=True).clamp(min=1e-8)
                weight.copy_(sphere * self.config.init_radius)

    def lookup_tables(self) -> LookupTables:
        """Normalised codebook (and distance bias) for the lookup; recomputed only when weights change."""
        weight = self.codebook.weight
        key = (weight._version, weight.data_ptr(), weight.device, weight.dtype)
        if self._tables is None or self._tables_key != key:
            self._tables = build_lookup_tables(weight, self.lookup_normalization, self.uses_distance)
            self._tables_key = key
        return self._tables

    def lookup_spec(self) -> "LookupSpec":
        """The lookup as plain numpy data, for float64 re-scoring (gsq_core.fidelity)."""
        from .fidelity import LookupSpec

        return LookupSpec(
            codebook=self.codebook.weight.detach().cpu().double().numpy(),
            num_group=self.num_group,
            normalization=self.lookup_normalization,
            uses_distance=self.uses_distance,
            has_group_axis=self.has_group_axis,
        )

    def _split_groups(self, latent: torch.Tensor) -> torch.Tensor:
        """[B, D, h, w] -> [B, h, w, G, d]."""
        if latent.dim() != 4 or latent.shape[1] != self.num_group * self.group_dim:
            raise InputError(
                f"latent must be [B, {self.num_group * self.group_dim}, h, w], got {list(latent.shape)}"
            )
        batch, _, height, width = latent.shape
        return latent.permute(0, 2, 3, 1).reshape(batch, height, width, self.num_group, self.group_dim)

    def _merge_groups(self, grouped: torch.Tensor) -> torch.Tensor:
        """[B, h, w, G, d] -> [B, D, h, w]."""
        batch, height, width = grouped.shape[:3]
        return grouped.reshape(batch, height, width, -1).permute(0, 3, 1, 2).contiguous()

    def _shape_codes(self, flat_codes: torch.Tensor, batch: int, height: int, width: int) -> torch.Tensor:
        codes = flat_codes.reshape(batch, height, width, self.num_group)
        return codes if self.has_group_axis else codes[..., 0]

    @torch.no_grad()
    def codes(self, latent: torch.Tensor) -> torch.Tensor:
        """Deterministic inference lookup: latent [B,D,h,w] -> int64 tokens (lowest index on ties)."""
        grouped = self._split_groups(latent)
        batch, height, width = grouped.shape[:3]
        flat = nearest_codes(grouped.reshape(-1, self.group_dim), self.lookup_tables())
        return self._shape_codes(flat, batch, height, width)

    def check_codes(self, codes: torch.Tensor) -> None:
        """Raise InputError unless codes are integer ids in [0, V) with a valid token shape."""
        if codes.dtype.is_floating_point or codes.dtype == torch.bool or codes.is_complex():
            raise InputError(f"token ids must be integers, got dtype {codes.dtype}")
        expected_dims = 4 if self.has_group_axis else 3
        if codes.dim() != expected_dims or (self.has_group_axis and codes.shape[-1] != self.num_group):
            layout = f"[B, h, w, {self.num_group}]" if self.has_group_axis else "[B, h, w]"
            raise InputError(f"token ids must have shape {layout}, got {list(codes.shape)}")
        if codes.numel():
            low, high = int(codes.min()), int(codes.max())
            if low < 0 or high >= self.num_embed:
                bad = low if low < 0 else high
                raise InputError(f"token id {bad} is outside [0, {self.num_embed}) (codebook size {self.num_embed})")

    def codes_to_latent(self, codes: torch.Tensor) -> torch.Tensor:
        """Tokens -> quantized latent [B, D, h, w] from the raw codebook rows."""
        self.check_codes(codes)
        if not self.has_group_axis:
            codes = codes.unsqueeze(-1)
        return self._merge_groups(self.codebook(codes.long()))

    def scores(self, vectors: torch.Tensor) -> torch.Tensor:
        """Differentiable full score matrix [N, V] (training losses only: O(N*V) memory)."""
        tables = self.lookup_tables()
        x = normalize_vectors(vectors, tables.normalization)
        weight = normalize_vectors(self.codebook.weight, tables.normalization)
        scores = x @ weight.T
        if self.uses_distance:
            scores = scores - 0.5 * weight.pow(2).sum(dim=1)
        return scores

    def _entropy_loss(self, scores: torch.Tensor) -> torch.Tensor:
        """Per-sample entropy minus entropy of the average assignment (sharp and diverse usage)."""
        logits = scores / self.config.entropy_temperature
        probs = logits.softmax(dim=-1)
        log_probs = logits.log_softmax(dim=-1)
        sample_entropy = -(probs * log_probs).sum(dim=-1).mean()
        mean_probs = probs.mean(dim=0)
        codebook_entropy = -(mean_probs * torch.log(mean_probs.clamp_min(1e-12))).sum()
        return sample_entropy - codebook_entropy

    def forward(self, latent: torch.Tensor) -> QuantizerOutput:
        """Training forward: nearest code, commitment loss, straight-through estimator."""
        grouped = self._split_groups(latent)
        batch, height, width = grouped.shape[:3]
        vectors = grouped.reshape(-1, self.group_dim)
        flat_codes = nearest_codes(vectors.detach(), self.lookup_tables())
        normalized = normalize_vectors(vectors, self.config.lookup_normalization)
        chosen = self.codebook(flat_codes)
        loss = F.mse_loss(chosen, normalized.detach()) + self.config.commitment_loss_weight * F.mse_loss(
            chosen.detach(), normalized
        )
        scores = None
        if self.config.entropy_loss_weight > 0:
            scores = self.scores(vectors)
            loss = loss + self.config.entropy_loss_weight * self._entropy_loss(scores)
        straight_through = normalized + (chosen - normalized).detach()
        quantized = self._merge_groups(straight_through.reshape(batch, height, width, self.num_group, -1))
        return QuantizerOutput(quantized, self._shape_codes(flat_codes, batch, height, width), loss, scores)


class GroupSphericalQuantizer(CodebookQuantizer):
    """GSQ: G groups of d channels, each l2-normalised and matched against one shared codebook."""


class VectorQuantizer(CodebookQuantizer):
    """Plain VQ (upstream 'vq'): one vector of D channels per position, tokens [B, h, w]."""

    @property
    def has_group_axis(self) -> bool:
        return False


class IndexBackpropQuantizer(CodebookQuantizer):
    """IBQ (SEED-Voken's IndexPropagationQuantize): token = argmax of the logits z . c over the raw
    codebook (no normalisation unless the config asks for one), lowest index on ties.

    Training backpropagates through a softmax over all codes: the straight-through one-hot
    (hard - softmax.detach() + softmax) times the codebook lets every code receive gradient, which
    keeps large codebooks in use. Tokens are [B, h, w] with one group (upstream's layout) and
    [B, h, w, G] with several.
    """

    uses_distance = False

    @property
    def has_group_axis(self) -> bool:
        return self.num_group > 1

    def _init_codebook(self) -> None:
        if self.config.use_uniform_init:
            super()._init_codebook()
        else:  # upstream leaves nn.Embedding's default N(0, 1) initialisation
            nn.init.normal_(self.codebook.weight)

    def forward(self, latent: torch.Tensor) -> QuantizerOutput:
        """Upstream's objective: mean((z_q - z)^2) + mean((hard - z)^2) on the encoder side and
        commitment_loss_weight (upstream beta) * mean((hard - z)^2) on the codebook side, where z_q is
        the straight-through soft one-hot times the codebook and hard the chosen rows."""
        grouped = self._split_groups(latent)
        batch, height, width = grouped.shape[:3]
        vectors = normalize_vectors(grouped.reshape(-1, self.group_dim), self.config.lookup_normalization)
        logits = self.scores(grouped.reshape(-1, self.group_dim))
        soft = logits.softmax(dim=-1)
        with torch.no_grad():
            flat_codes = nearest_codes(vectors.detach(), self.lookup_tables())
        hard = F.one_hot(flat_codes, self.num_embed).to(soft.dtype)
        one_hot = hard - soft.detach() + soft
        codebook = normalize_vectors(self.codebook.weight, self.config.lookup_normalization)
        quantized_vectors = one_hot @ codebook
        chosen = codebook[flat_codes]
        loss = (
            F.mse_loss(quantized_vectors, vectors)
            + F.mse_loss(chosen.detach(), vectors)
            + self.config.commitment_loss_weight * F.mse_loss(chosen, vectors.detach())
        )
        if self.config.entropy_loss_weight > 0:
            loss = loss + self.config.entropy_loss_weight * self._entropy_loss(logits)
        quantized = self._merge_groups(quantized_vectors.reshape(batch, height, width, self.num_group, -1))
        return QuantizerOutput(quantized, self._shape_codes(flat_codes, batch, height, width), loss, logits)


QUANTIZER_CLASSES: dict[str, type[CodebookQuantizer]] = {
    "gsq": GroupSphericalQuantizer,
    "vq": VectorQuantizer,
    "ibq": IndexBackpropQuantizer,
}


def build_quantizer(config: QuantizerConfig) -> CodebookQuantizer:
    """Instantiate the quantizer class named by config.quantize_type."""
    config.validate()
    return QUANTIZER_CLASSES[config.quantize_type](config)
