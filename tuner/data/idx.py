"""The IDX file format of MNIST and Fashion-MNIST (LeCun et al., http://yann.lecun.com/exdb/mnist/).

An IDX file is a 4-byte magic number ``0x00 0x00 TYPE NDIM``, then ``NDIM`` big-endian
uint32 dimension sizes, then the values in C order, big-endian. ``TYPE`` is one of
:data:`IDX_TYPES`. Files may be gzipped (recognized by their first two bytes, not their name).
"""

from __future__ import annotations

import gzip
import io
import struct
from pathlib import Path

import numpy as np

#: IDX type byte -> big-endian NumPy dtype.
IDX_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
GZIP_MAGIC = b"\x1f\x8b"
_CHUNK_BYTES = 1 << 24  # read in pieces so that a short read is noticed and memory stays flat


class IdxError(ValueError):
    """A file that is not a well-formed IDX file; the message says what is wrong."""


def _open(path: Path) -> io.BufferedIOBase:
    with open(path, "rb") as f:
        gzipped = f.read(2) == GZIP_MAGIC
    return gzip.open(path, "rb") if gzipped else open(path, "rb")


def _read_header(f: io.BufferedIOBase, ndim: int) -> tuple[tuple[int, ...], np.dtype]:
    try:
        magic = f.read(4)
    except (OSError, EOFError) as e:  # a corrupt gzip stream
        raise IdxError(f"cannot be decompressed: {e}") from None
    if not magic:
        raise IdxError("the file is empty")
    if len(magic) < 4 or magic[:2] != b"\x00\x00" or magic[2] not in IDX_TYPES or magic[3] != ndim:
        got = "0x" + magic.hex().upper()
        raise IdxError(
            f"wrong magic number {got}, expected 0x000008{ndim:02X} (type byte 08-0E, "
            f"{ndim} dimension{'s' if ndim > 1 else ''}); is this the right IDX file?"
        )
    header = f.read(4 * ndim)
    if len(header) < 4 * ndim:
        raise IdxError(f"truncated: the header ends after {4 + len(header)} bytes")
    return tuple(struct.unpack(f">{ndim}I", header)), IDX_TYPES[magic[2]]


def idx_shape(path: str | Path, *, ndim: int) -> tuple[tuple[int, ...], np.dtype]:
    """The shape and (big-endian) dtype announced by an IDX file's header.

    Raises:
        IdxError: a wrong magic number or a truncated header.
    """
    with _open(Path(path)) as f:
        try:
            return _read_header(f, ndim)
        except IdxError as e:
            raise IdxError(f"{Path(path).name}: {e}") from None


def _fill(f: io.BufferedIOBase, buffer: memoryview, shape: tuple[int, ...]) -> None:
    filled = 0
    try:
        while filled < buffer.nbytes:
            n = f.readinto(buffer[filled : filled + _CHUNK_BYTES])
            if not n:
                break
            filled += n
        extra = f.read(1)
    except (OSError, EOFError) as e:
        raise IdxError(f"truncated or corrupt: {e}") from None
    if filled < buffer.nbytes:
        raise IdxError(
            f"truncated: the header announces {' x '.join(map(str, shape))} values "
            f"({buffer.nbytes} bytes) but the file holds {filled}"
        )
    if extra:
        raise IdxError(
            f"longer than its header says ({' x '.join(map(str, shape))} values); "
            "is this the right IDX file?"
        )


def read_idx(*paths: str | Path, ndim: int) -> np.ndarray:
    """Read one IDX file, or several concatenated along the first axis, into one array.

    The values go straight from the file into a single array allocated once (no intermediate
    copies), so reading 60,000 MNIST images takes their size in memory and no more.

    Args:
        paths: the files, gzipped or not; their dimensions after the first must agree, and so
            must their types.
        ndim: the number of dimensions expected (3 for images ``(n, rows, cols)``, 1 for labels).

    Returns:
        An array of shape ``(sum of n, *rest)`` in native byte order with the files' dtype:
        uint8, int8, int16, int32, float32 or float64.

    Raises:
        IdxError: a wrong magic number (not IDX, an unknown type byte, or not ``ndim``
            dimensions), a file shorter than its header says (truncated) or longer, or files
            whose shapes or types disagree. The message names the file.
        OSError: a file cannot be read.
    """
    headers = [idx_shape(p, ndim=ndim) for p in paths]
    (first_shape, dtype), rest = headers[0], headers[1:]
    for p, (shape, other) in zip(paths[1:], rest, strict=True):
        if shape[1:] != first_shape[1:] or other != dtype:
            raise IdxError(
                f"{Path(p).name} holds {shape[1:]} {other.name} items but {Path(paths[0]).name} "
                f"holds {first_shape[1:]} {dtype.name}; the files do not belong together"
            )
    array = np.empty((sum(s[0] for s, _ in headers), *first_shape[1:]), dtype=dtype)
    start = 0
    for p, (shape, _) in zip(paths, headers, strict=True):
        part = array[start : start + shape[0]]
        with _open(Path(p)) as f:
            _read_header(f, ndim)
            try:
                _fill(f, part.reshape(-1).view(np.uint8).data, shape)
            except IdxError as e:
                raise IdxError(f"{Path(p).name}: {e}") from None
        start += shape[0]
    if not dtype.isnative:
        # In place: a second copy of a 60,000-image file would double the peak memory.
        array = array.byteswap(inplace=True).view(dtype.newbyteorder("="))
    return array


def write_idx(path: str | Path, array: np.ndarray, *, compress: bool = False) -> None:
    """Write ``array`` (dtype one of :data:`IDX_TYPES`' types) as an IDX file, gzipped if asked.

    Used by the tests and the benchmark to build MNIST-shaped files.
    """
    codes = {dt.newbyteorder("="): code for code, dt in IDX_TYPES.items()}
    array = np.asarray(array)
    code = codes[array.dtype.newbyteorder("=")]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb", compresslevel=1) if compress else open(path, "wb") as f:
        f.write(header)
        f.write(np.ascontiguousarray(array, dtype=array.dtype.newbyteorder(">")).tobytes())
