"""What each exported graph computes: torch wrappers around the eager model, and their I/O specs.

The wrappers add only graph-friendly glue to the eager GSQTokenizer's submodules: the quantizer
lookup with its constants folded (a proven candidate window for d <= 2, exporters.lookup_graph;
otherwise the normalised codebook, optional distance bias, split into codebook blocks), and the
codebook Gather in front of the decoder. Shapes are read only through
tensor.shape, which the exporter's tracer records as graph ops, so batch, height and width stay
symbolic in the exported graph (validation runs other shapes than the traced ones to prove it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from gsq_core.model import GSQTokenizer

from . import GRAPH_NAMES  # noqa: F401  (also importable from here, as before)
from .lookup_graph import LookupPlan, WindowLookup, graph_normalize, plan_lookup

# Codes per lookup block: the graph never holds more than [N, LOOKUP_CODE_BLOCK] fp32 scores.
LOOKUP_CODE_BLOCK = 65536


def lookup_bias(model: GSQTokenizer) -> torch.Tensor | None:
    """The bias -|c|^2/2 the graph adds to the scores, or None when it cannot change the argmax.

    After l2 normalisation every codebook row has norm 1, so the eager table's bias is -0.5 for
    every code (up to fp32 rounding) and is dropped: the l2 lookup is normalize + MatMul + ArgMax.
    It is kept for plain VQ (distance form) and for a codebook with a zero row, where it matters.
    """
    tables = model.quantizer.lookup_tables()
    bias = tables.bias
    if bias is None:
        return None
    if tables.normalization == "l2" and bool(((bias + 0.5).abs() <= 1e-6).all()):
        return None
    return bias.detach().float().cpu()


class CodebookLookup(nn.Module):
    """Nearest code for each row of vectors [N, d] -> int64 [N]; blocked, lowest index wins ties.

    score = normalize(x) @ weight_t (+ bias): the constants of model.quantizer.lookup_tables(), with
    weight_t the normalised codebook transposed [d, V] and bias = -|c|^2 / 2 where it matters (see
    lookup_bias). Per block: MatMul (+ Add), ReduceMax and ArgMax; blocks merge with a strict
    Greater so an earlier block keeps exact ties.
    """

    def __init__(self, model: GSQTokenizer, code_block: int = LOOKUP_CODE_BLOCK):
        super().__init__()
        if code_block < 1:
            raise ValueError(f"code_block={code_block} must be >= 1")
        tables = model.quantizer.lookup_tables()
        self.normalization = tables.normalization
        weight = tables.weight.detach().float().cpu()
        bias = lookup_bias(model)
        self.block_starts = list(range(0, weight.shape[0], code_block))
        self.has_bias = bias is not None
        for index, start in enumerate(self.block_starts):
            self.register_buffer(f"weight_t_{index}", weight[start : start + code_block].T.contiguous())
            if bias is not None:
                self.register_buffer(f"bias_{index}", bias[start : start + code_block].contiguous())

    def forward(self, vectors: torch.Tensor) -> torch.Tensor:
        x = graph_normalize(vectors, self.normalization)
        best_score: torch.Tensor | None = None
        best_index: torch.Tensor | None = None
        for index, start in enumerate(self.block_starts):
            scores = x @ getattr(self, f"weight_t_{index}")
            if self.has_bias:
                scores = scores + getattr(self, f"bias_{index}")
            if len(self.block_starts) == 1:
                return scores.argmax(dim=1)
            block_score, block_index = scores.max(dim=1)
            if best_score is None or best_index is None:
                best_score, best_index = block_score, block_index
                continue
            better = block_score > best_score  # strict: the earlier block keeps exact ties
            best_score = torch.where(better, block_score, best_score)
            best_index = torch.where(better, block_index + start, best_index)
        assert best_index is not None
        return best_index


LOOKUP_METHODS = ("auto", "dense")


def lookup_plan(model: GSQTokenizer, code_block: int = LOOKUP_CODE_BLOCK, method: str = "auto") -> LookupPlan:
    """How the graphs look codes up: the window lookup where it is proven for this codebook, else dense.

    method "dense" keeps the dense lookup whatever the codebook (for comparisons).
    """
    if method not in LOOKUP_METHODS:
        raise ValueError(f"unknown lookup method {method!r}; choose from {', '.join(LOOKUP_METHODS)}")
    tables = model.quantizer.lookup_tables()
    if method == "dense":
        return LookupPlan("dense", "asked for the dense lookup", model.num_embed, code_block)
    return plan_lookup(tables.weight, lookup_bias(model), tables.normalization, code_block)


def lookup_module(model: GSQTokenizer, plan: LookupPlan) -> nn.Module:
    """The lookup a plan describes: [N, d] vectors -> int64 [N] codes."""
    if plan.window is not None:
        return WindowLookup(plan.window, model.quantizer.lookup_tables().normalization, model.num_embed)
    return CodebookLookup(model, plan.code_block)


class QuantizerGraph(nn.Module):
    """latent [B, D, h, w] -> codes int64 [B, h, w, G] ([B, h, w] for plain VQ)."""

    def __init__(self, model: GSQTokenizer, plan: LookupPlan | None = None):
        super().__init__()
        self.num_group = model.num_group
        self.group_dim = model.quantizer.group_dim
        self.has_group_axis = model.quantizer.has_group_axis
        self.lookup = lookup_module(model, plan or lookup_plan(model))

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        channels_last = latent.permute(0, 2, 3, 1)  # [B, h, w, D]; channel c = g * d + k
        flat_codes = self.lookup(channels_last.reshape(-1, self.group_dim))
        batch, height, width = channels_last.shape[0], channels_last.shape[1], channels_last.shape[2]
        if self.has_group_axis:
            return flat_codes.reshape(batch, height, width, self.num_group)
        return flat_codes.reshape(batch, height, width)


class EncoderGraph(nn.Module):
    """images [B, 3, H, W] -> latent [B, D, H/f, W/f]."""

    def __init__(self, model: GSQTokenizer):
        super().__init__()
        self.encoder = model.encoder

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder(images)


class DecoderGraph(nn.Module):
    """codes -> images [B, 3, h*f, w*f]: Gather of the raw codebook rows, then the decoder."""

    def __init__(self, model: GSQTokenizer):
        super().__init__()
        self.register_buffer("codebook", model.quantizer.codebook.weight.detach().float().cpu().clone())
        self.has_group_axis = model.quantizer.has_group_axis
        self.decoder = model.decoder

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        vectors = self.codebook[codes]  # [B, h, w, G, d] or [B, h, w, D]
        if self.has_group_axis:
            vectors = vectors.flatten(3)
        return self.decoder(vectors.permute(0, 3, 1, 2))


class TokenizeGraph(nn.Module):
    """images -> codes: encoder and quantizer in one graph."""

    def __init__(self, model: GSQTokenizer, plan: LookupPlan | None = None):
        super().__init__()
        self.encoder = EncoderGraph(model)
        self.quantizer = QuantizerGraph(model, plan)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.quantizer(self.encoder(images))


# -- I/O specs -------------------------------------------------------------------------------------
Dim = int | str


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: name, numpy dtype name, shape with symbolic axes as strings."""

    name: str
    dtype: str
    shape: tuple[Dim, ...]

    def to_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    def dynamic_axes(self) -> dict[int, str]:
        """Axis index -> symbolic name, as torch.onnx.export's dynamic_axes wants it."""
        return {axis: dim for axis, dim in enumerate(self.shape) if isinstance(dim, str)}


@dataclass(frozen=True)
class GraphSpec:
    """One graph of the artifact: its file, how to build the torch module, and its I/O (validation
    feeds it the eager value named like its input and compares its output with the eager value named
    like its output: images, latent or codes; its tolerances come from the precision it is built in,
    exporters.validation.tolerances_for, the same for every graph)."""

    name: str
    file: str
    build: Callable[[GSQTokenizer], nn.Module]
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


@dataclass(frozen=True)
class ShapePlan:
    """Batch and image size: symbolic (dynamic export) or fixed (static export)."""

    batch: Dim
    height: Dim
    width: Dim
    token_height: Dim
    token_width: Dim

    @classmethod
    def dynamic(cls) -> "ShapePlan":
        return cls("batch", "height", "width", "token_height", "token_width")

    @classmethod
    def static(cls, batch: int, height: int, width: int, factor: int) -> "ShapePlan":
        return cls(batch, height, width, height // factor, width // factor)


def graph_specs(model: GSQTokenizer, plan: ShapePlan, lookup: LookupPlan | None = None) -> dict[str, GraphSpec]:
    """The five graphs of an artifact for this model, with their I/O shapes under plan. lookup: how
    the quantizer and tokenize graphs look codes up (default: lookup_plan(model), made when a graph
    that needs it is built)."""
    plans: list[LookupPlan] = [lookup] if lookup is not None else []

    def the_lookup() -> LookupPlan:
        if not plans:
            plans.append(lookup_plan(model))
        return plans[0]

    channels = model.config.input_channels
    embed_dim = model.config.embedding_dim
    images = TensorSpec("images", "float32", (plan.batch, channels, plan.height, plan.width))
    latent = TensorSpec("latent", "float32", (plan.batch, embed_dim, plan.token_height, plan.token_width))
    grid = (plan.batch, plan.token_height, plan.token_width)
    codes = TensorSpec("codes", "int64", grid + ((model.num_group,) if model.quantizer.has_group_axis else ()))
    return {
        "encoder": GraphSpec("encoder", "encoder.onnx", EncoderGraph, (images,), (latent,)),
        "quantizer": GraphSpec(
            "quantizer", "quantizer.onnx", lambda m: QuantizerGraph(m, the_lookup()), (latent,), (codes,)
        ),
        "decoder": GraphSpec("decoder", "decoder.onnx", DecoderGraph, (codes,), (images,)),
        "tokenize": GraphSpec("tokenize", "tokenize.onnx", lambda m: TokenizeGraph(m, the_lookup()), (images,), (codes,)),
        "detokenize": GraphSpec("detokenize", "detokenize.onnx", DecoderGraph, (codes,), (images,)),
    }
