"""Per-graph precision: one precision for every graph, or one per part of the model.

    PrecisionPlan.parse("int8")                         # encoder and decoder int8
    PrecisionPlan.parse("encoder=fp32,decoder=int8")    # or encoder=fp32+decoder=int8 ('+' inside lists)
    PrecisionPlan.parse("decoder=bf16")                 # a part not named is fp32

The model has two parts whose precision a user chooses, the encoder and the decoder, because the
decoder tolerates rounding that the encoder's tokens do not. The codebook lookup between them is
fp32 in every build, and so is the codebook gather in front of the decoder. Graphs follow their parts:

    encoder    -> the encoder's precision
    quantizer  -> fp32 (the lookup alone)
    decoder    -> the decoder's precision (codebook gather fp32)
    tokenize   -> the encoder's precision, its lookup fp32
    detokenize -> the decoder's precision, its codebook gather fp32

A plan is parsed once, where a user gives it as text (gsq-export's --precision, benchmarks/compare.py's
--precisions, a manifest read back), and travels as a PrecisionPlan from there on: ExportOptions,
the targets and validation take the plan, never a string. It renders itself in one way, `str(plan)`,
the canonical spec: one name when both parts agree ("int8"), else "encoder=fp32,decoder=int8"; the
manifest and the validation report record it as `precision` (with the plain per-part and per-graph
facts beside it: `precisions`, `graphs.<name>.precision`), and `slug` is the same text made safe
for a file name.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

from gsq_deploy.runtimes.artifacts import LOOKUP_GRAPHS, PRECISIONS

from . import ExportError

PARTS: tuple[str, ...] = ("encoder", "decoder")
LOOKUP_PRECISION = "fp32"
# graph -> the part whose precision it is built in (None: the lookup alone, fp32 in every build)
GRAPH_PART: dict[str, str | None] = {
    "encoder": "encoder",
    "quantizer": None,
    "decoder": "decoder",
    "tokenize": "encoder",
    "detokenize": "decoder",
}


@dataclass(frozen=True)
class PrecisionPlan:
    """The precision of each part of the model; the lookup is fp32 always."""

    encoder: str = "fp32"
    decoder: str = "fp32"

    def __post_init__(self) -> None:
        for part in PARTS:
            value = getattr(self, part)
            if value not in PRECISIONS:
                raise ExportError(f"precision {value!r} for the {part} is unknown; choose from {', '.join(PRECISIONS)}")

    @classmethod
    def uniform(cls, precision: str) -> PrecisionPlan:
        """Every part in one precision."""
        return cls(precision, precision)

    @classmethod
    def parse(cls, text: str) -> PrecisionPlan:
        """A plan from `fp32` or `encoder=fp32,decoder=int8` (',' or '+' between parts);
        ExportError (one line) for anything else. Called where a user's text enters, once."""
        spec = text.strip()
        if not spec:
            raise ExportError(f"--precision is empty; give one of {', '.join(PRECISIONS)} or encoder=...,decoder=...")
        if "=" not in spec:
            if spec not in PRECISIONS:
                raise ExportError(f"--precision {spec!r} is unknown; choose from {', '.join(PRECISIONS)}")
            return cls.uniform(spec)
        chosen: dict[str, str] = {}
        for item in re.split(r"[,+]", spec):
            name, separator, value = (piece.strip() for piece in item.partition("="))
            if not separator or not name or not value:
                raise ExportError(f"--precision {spec!r}: {item.strip()!r} is not PART=PRECISION (e.g. decoder=int8)")
            if name == "quantizer" or name == "lookup":
                raise ExportError(
                    f"--precision {spec!r}: the {name} (the codebook lookup) is fp32 in every build; "
                    f"give a precision for {' and/or '.join(PARTS)}"
                )
            if name not in PARTS:
                raise ExportError(f"--precision {spec!r}: unknown part {name!r}; choose from {', '.join(PARTS)}")
            if name in chosen:
                raise ExportError(f"--precision {spec!r}: the {name} is given twice")
            if value not in PRECISIONS:
                raise ExportError(
                    f"--precision {spec!r}: precision {value!r} for the {name} is unknown; choose from {', '.join(PRECISIONS)}"
                )
            chosen[name] = value
        return cls(**chosen)

    def for_part(self, part: str) -> str:
        """The precision of the encoder or the decoder."""
        return getattr(self, part)

    def for_graph(self, graph: str) -> str:
        """The precision one graph is built in (the lookup's graph: fp32)."""
        if graph not in GRAPH_PART:
            raise ExportError(f"unknown graph {graph!r}; choose from {', '.join(GRAPH_PART)}")
        part = GRAPH_PART[graph]
        return LOOKUP_PRECISION if part is None else self.for_part(part)

    def map(self, convert: Callable[[str], str]) -> PrecisionPlan:
        """The plan with every part's precision passed through convert (e.g. the source a target
        converts each part from)."""
        return replace(self, **{part: convert(self.for_part(part)) for part in PARTS})

    @property
    def single(self) -> str | None:
        """The one precision of every part, or None for a mixed plan."""
        return self.encoder if self.encoder == self.decoder else None

    def parts_in(self, precision: str) -> list[str]:
        """The parts built in this precision."""
        return [part for part in PARTS if self.for_part(part) == precision]

    def to_manifest(self) -> dict[str, str]:
        """The manifest's `precisions`: every part, the lookup included, with its precision."""
        return {"encoder": self.encoder, "quantizer": LOOKUP_PRECISION, "decoder": self.decoder}

    def unsupported(self, available: Iterable[str]) -> str | None:
        """How a refusal names the first precision of this plan not in `available`: `fp16` when
        every part has it, `bf16 (the decoder)` otherwise; None when every part's is available."""
        allowed = set(available)
        used = (self.encoder, self.decoder)
        missing = [precision for precision in PRECISIONS if precision in used and precision not in allowed]
        if not missing:
            return None
        first = missing[0]
        return first if self.single == first else f"{first} (the {' and '.join(self.parts_in(first))})"

    @property
    def slug(self) -> str:
        """The spec made safe for a file name: `int8`, `encoder_fp32+decoder_int8`."""
        return str(self).replace("=", "_").replace(",", "+")

    def __str__(self) -> str:
        """The canonical spec, what the manifest and the report record: `int8`, `encoder=fp32,decoder=int8`."""
        return self.single or ",".join(f"{part}={self.for_part(part)}" for part in PARTS)
