"""Token files: the .npz `encode` writes, read by type from their headers and streamed in batches.

A token file is untrusted input: its arrays' headers can claim any shape and dtype (an .npz of a few
hundred bytes can claim 256 TiB), its members can be corrupt or of the wrong kind. So nothing is
loaded before its header is checked against TOKEN_FILE_SCHEMA and against the bytes the member
really holds; the small arrays (paths, model facts) are then loaded whole (at most
MAX_SMALL_ARRAY_BYTES each), and the codes are read one batch at a time, after one streaming pass
that checks the whole member (CRC, length, id range) so that decoding never stops half-way.

    tokens = read_token_file(Path("tokens.npz"))
    for batch in tokens.batches(8): ...      # int64 [<=8, h, w, G]
"""

from __future__ import annotations

import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from gsq_core.errors import InputError

MAX_SMALL_ARRAY_BYTES = 64 * 2**20  # paths and model facts are loaded whole
MAX_FORTRAN_ORDER_BYTES = 256 * 2**20  # column-major codes cannot be streamed by rows: loaded whole
READ_CHUNK_BYTES = 8 * 2**20


@dataclass(frozen=True)
class ArraySpec:
    """What one array of a token file must be: dtype kinds (numpy's dtype.kind) and dimensions."""

    kinds: str
    ndims: tuple[int, ...]
    description: str


# The arrays `encode` writes, by type. Other arrays are ignored; codes are required.
TOKEN_FILE_SCHEMA: dict[str, ArraySpec] = {
    "codes": ArraySpec("iu", (3, 4), "integer token ids [N, h, w, G] or [N, h, w]"),
    "paths": ArraySpec("U", (1,), "a list of input paths, one per token grid"),
    "num_embed": ArraySpec("iu", (0,), "one integer (codebook size)"),
    "num_group": ArraySpec("iu", (0,), "one integer (groups)"),
    "downsample_factor": ArraySpec("iu", (0,), "one integer (downsampling factor)"),
    "token_layout": ArraySpec("U", (0,), "one string (BHWG or BHW)"),
}
REQUIRED_ARRAYS = ("codes",)


@dataclass
class TokenFile:
    """A checked token file: its codes' shape and dtype, output names and model facts."""

    path: Path
    codes_shape: tuple[int, ...]
    codes_dtype: np.dtype
    names: list[str]
    facts: dict[str, Any] = field(default_factory=dict)  # num_embed, num_group, downsample_factor, token_layout
    id_range: tuple[int, int] | None = None  # (min, max) over all codes; None when there are none
    _fortran_codes: np.ndarray | None = None

    @property
    def count(self) -> int:
        return self.codes_shape[0]

    def batches(self, batch_size: int) -> Iterator[np.ndarray]:
        """The codes, batch_size token grids at a time (int64), in file order."""
        if self._fortran_codes is not None:
            for start in range(0, self.count, batch_size):
                yield self._fortran_codes[start : start + batch_size].astype(np.int64)
            return
        row_bytes = int(np.prod(self.codes_shape[1:], dtype=np.int64)) * self.codes_dtype.itemsize
        with zipfile.ZipFile(self.path) as archive, archive.open("codes.npy") as member:
            _read_header(member, "codes", self.path)
            for start in range(0, self.count, batch_size):
                rows = min(batch_size, self.count - start)
                data = _read_exact(member, rows * row_bytes, self.path)
                yield np.frombuffer(data, dtype=self.codes_dtype).reshape((rows, *self.codes_shape[1:])).astype(np.int64)


def read_token_file(path: Path) -> TokenFile:
    """Check a token file's members by header and content, without loading the codes; InputError otherwise."""
    if not path.is_file():
        raise InputError(f"{path}: no such tokens file")
    try:
        with zipfile.ZipFile(path) as archive:
            members = {info.filename: info for info in archive.infolist()}
            headers = {}
            for name, spec in TOKEN_FILE_SCHEMA.items():
                info = members.get(f"{name}.npy")
                if info is None:
                    if name in REQUIRED_ARRAYS:
                        found = ", ".join(m.removesuffix(".npy") for m in members) or "nothing"
                        raise InputError(f"{path}: has no '{name}' array (found: {found})")
                    continue
                with archive.open(info) as member:
                    headers[name] = _check_header(member, info, name, spec, path)
            small = {name: _load_small(archive, name, path) for name in headers if name != "codes"}
            shape, fortran, dtype = headers["codes"]
            fortran_codes = None
            if fortran:
                fortran_codes = _load_fortran(archive, shape, dtype, path)
                id_range = _id_range(fortran_codes)
            else:
                id_range = _scan_codes(archive, dtype, path)
    except InputError:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, RuntimeError) as error:
        raise InputError(f"{path}: not a readable .npz tokens file ({error})") from None
    names = _output_names(path, shape[0], small.get("paths"))
    facts = {key: small[key].item() for key in ("num_embed", "num_group", "downsample_factor", "token_layout") if key in small}
    return TokenFile(path, shape, dtype, names, facts, id_range, fortran_codes)


def _check_header(member: IO[bytes], info: zipfile.ZipInfo, name: str, spec: ArraySpec, path: Path):
    shape, fortran, dtype = _read_header(member, name, path)
    header_bytes = member.tell()
    if dtype.kind not in spec.kinds or dtype.hasobject or len(shape) not in spec.ndims:
        raise InputError(
            f"{path}: '{name}' must be {spec.description}; its header says dtype {dtype} with shape {list(shape)}"
        )
    claimed = int(np.prod(shape, dtype=object)) * dtype.itemsize
    held = info.file_size - header_bytes
    if claimed != held:
        raise InputError(
            f"{path}: '{name}' claims shape {list(shape)} of {dtype} ({_size_text(claimed)}) but its member holds "
            f"{_size_text(held)}; the file is corrupt or forged"
        )
    return shape, fortran, dtype


def _read_header(member: IO[bytes], name: str, path: Path):
    try:
        version = np.lib.format.read_magic(member)
        if version == (1, 0):
            return np.lib.format.read_array_header_1_0(member)
        if version in ((2, 0), (3, 0)):
            return np.lib.format.read_array_header_2_0(member)
        raise ValueError(f"npy format version {version}")
    except (ValueError, SyntaxError, TypeError) as error:
        raise InputError(f"{path}: '{name}' is not a readable array ({str(error).splitlines()[0]})") from None


def _load_small(archive: zipfile.ZipFile, name: str, path: Path) -> np.ndarray:
    info = archive.getinfo(f"{name}.npy")
    if info.file_size > MAX_SMALL_ARRAY_BYTES:
        raise InputError(f"{path}: '{name}' holds {_size_text(info.file_size)}, more than a token file needs")
    with archive.open(info) as member:
        return np.load(member, allow_pickle=False)


def _load_fortran(archive: zipfile.ZipFile, shape: tuple[int, ...], dtype: np.dtype, path: Path) -> np.ndarray:
    size = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if size > MAX_FORTRAN_ORDER_BYTES:
        raise InputError(
            f"{path}: codes are stored column-major (Fortran order) and hold {_size_text(size)}; save them "
            "with np.ascontiguousarray to stream them"
        )
    with archive.open("codes.npy") as member:
        return np.ascontiguousarray(np.load(member, allow_pickle=False))


def _scan_codes(archive: zipfile.ZipFile, dtype: np.dtype, path: Path) -> tuple[int, int] | None:
    """One streaming pass over the codes: the zip CRC and length hold, and the ids' (min, max)."""
    low = high = None
    with archive.open("codes.npy") as member:
        _read_header(member, "codes", path)
        carry = b""
        while chunk := member.read(READ_CHUNK_BYTES):
            chunk = carry + chunk
            usable = len(chunk) - len(chunk) % dtype.itemsize
            carry = chunk[usable:]
            values = np.frombuffer(chunk[:usable], dtype=dtype)
            if values.size:
                low = int(values.min()) if low is None else min(low, int(values.min()))
                high = int(values.max()) if high is None else max(high, int(values.max()))
    return None if low is None else (low, high)  # type: ignore[return-value]


def _id_range(codes: np.ndarray) -> tuple[int, int] | None:
    return (int(codes.min()), int(codes.max())) if codes.size else None


def _read_exact(member: IO[bytes], size: int, path: Path) -> bytes:
    data = member.read(size)
    if len(data) != size:
        raise InputError(f"{path}: codes end early ({len(data)} of {size} bytes in the last batch)")
    return data


def _output_names(path: Path, count: int, paths: np.ndarray | None) -> list[str]:
    """One output name per token grid: the input's stem, else image_0000...; unique and plain."""
    if paths is None:
        return [f"image_{index:04d}" for index in range(count)]
    if len(paths) != count:
        raise InputError(f"{path}: {len(paths)} paths for {count} token grids")
    names = []
    seen: dict[str, int] = {}
    for index, source in enumerate(str(p) for p in paths):
        name = Path(source).stem
        if not name or name in (".", "..") or "\x00" in name:
            raise InputError(f"{path}: input {index} has the path {source!r}, which gives no usable output name")
        if name in seen:
            raise InputError(
                f"{path}: inputs {seen[name]} and {index} share the name {name!r}; their images would overwrite each other"
            )
        seen[name] = index
        names.append(name)
    return names


def _size_text(size: int) -> str:
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale:
            return f"{size / scale:,.1f} {unit}"
    return f"{size} bytes"
