"""Row blocks of `.npy` arrays, read from a file or a `.npz` member on every pass, never held whole."""
from __future__ import annotations

import os
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from ..errors import UserError

# what a damaged file or zip member raises while it is read (bad CRC, bad deflate stream, cut short)
_READ_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError)


class NpyStream:
    """Row blocks of one `.npy` array, read from a file or a zip member on each pass. `size`: the bytes the
    file or member holds; a header that declares more data than that is refused before anything is read."""

    def __init__(self, opener: Callable, what: str, size: int | None = None):
        self.opener, self.what = opener, what
        try:
            with opener() as fh:
                self.shape, self.dtype = self._header(fh)
                header = fh.tell()
        except UserError:
            raise
        except _READ_ERRORS as exc:
            raise UserError(f"{what}: not a readable .npy array ({type(exc).__name__}: {exc})") from None
        if size is not None:
            need = int(np.prod(self.shape, dtype=object)) * self.dtype.itemsize
            if header + need > size:
                raise UserError(f"{what}: the header declares a {'x'.join(map(str, self.shape))} {self.dtype} array "
                                f"({need:,} bytes) but the data holds {max(size - header, 0):,} bytes (truncated or "
                                "damaged)")

    def _header(self, fh):
        try:
            version = np.lib.format.read_magic(fh)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read(fh)
        except ValueError as exc:
            raise UserError(f"{self.what}: not a readable .npy array ({exc})") from None
        if dtype.hasobject:
            raise UserError(f"{self.what}: holds pickled objects, which are not loaded")
        if fortran and len(shape) > 1:
            raise UserError(f"{self.what}: Fortran-ordered arrays are not supported; save with np.ascontiguousarray")
        if len(shape) == 0:
            raise UserError(f"{self.what}: is a scalar, expected arrays with the batch first")
        return shape, dtype

    def __len__(self) -> int:
        return self.shape[0]

    def _stored(self) -> tuple[tuple, np.dtype]:
        """The shape and dtype of the array in the file (a subclass may hand out converted rows)."""
        return tuple(self.shape), self.dtype

    def _convert(self, block: np.ndarray) -> np.ndarray:
        """The rows `blocks` yields for a block read from the file."""
        return block

    def blocks(self, rows: int, first: int = 0, last: int | None = None) -> Iterator[np.ndarray]:
        """Blocks of `rows` rows from row `first` to `last` (the end); rows before `first` are skipped
        by seeking, not read."""
        last = len(self) if last is None else last
        shape, dtype = self._stored()
        row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
        try:
            with self.opener() as fh:
                self._header(fh)  # skip it
                if first:
                    fh.seek(first * row_bytes, os.SEEK_CUR)
                for start in range(first, last, rows):
                    n = min(rows, last - start)
                    buf = fh.read(n * row_bytes)
                    if len(buf) != n * row_bytes:
                        raise UserError(f"{self.what}: file is truncated")
                    yield self._convert(np.frombuffer(buf, dtype=dtype).reshape((n,) + shape[1:]))
        except UserError:
            raise
        except _READ_ERRORS as exc:  # the data changed since it was opened, or a damaged zip member
            raise UserError(f"{self.what}: cannot be read ({type(exc).__name__}: {exc})") from None


def npz_streams(path: Path) -> dict[str, NpyStream]:
    try:
        zf = zipfile.ZipFile(path)
        sizes = {i.filename: i.file_size for i in zf.infolist()}
        names = zf.namelist()
        zf.close()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise UserError(f"{path}: not a readable .npz file ({exc})") from None

    def opener(member):
        def open_member():
            z = zipfile.ZipFile(path)
            fh = z.open(member)
            return _Closing(fh, z)
        return open_member
    return {n[:-4]: NpyStream(opener(n), f"{path}[{n[:-4]}]", sizes[n]) for n in names if n.endswith(".npy")}


class _Closing:
    """A zip member whose archive closes with it."""

    def __init__(self, fh, archive):
        self.fh, self.archive = fh, archive

    def read(self, n=-1):
        return self.fh.read(n)

    def seek(self, offset, whence=os.SEEK_SET):
        return self.fh.seek(offset, whence)

    def tell(self):
        return self.fh.tell()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.fh.close()
        self.archive.close()
