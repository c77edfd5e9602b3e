"""Writing outputs: path checks before any work, atomic writes, external data for large models.

Outputs (docs/DESIGN.md, "Outputs"):
- are regular files: a symbolic link, a device (`/dev/null`, `/dev/stdout`), a FIFO or `-` is refused,
  never replaced or written through;
- never collide with an input (model, its external data, calibration data) or with one another, their
  external data files included, comparing resolved paths and inodes (symlinks, hard links, `./x`);
- are written to a temporary file in the target folder and renamed, so a failure (or SIGTERM) leaves no
  partial file; a write error names the file;
- with external data keep small tensors and integer tensors inline: shape inference, ONNX Runtime's
  included, reads shape constants (Reshape shapes, axes, pads, Slice bounds, Resize scales and sizes) from
  the model file and cannot read them from an external file.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import stat
import tempfile
from collections.abc import Iterable
from pathlib import Path

import onnx
from onnx import external_data_helper

from ..errors import UserError
from .skeleton import structure, too_big

# tensors below this many bytes stay in the model file (onnx.save's `size_threshold` default)
INLINE_BYTES = 1024
# integer tensors are shape constants (shapes, axes, pads, bounds, sizes): always inline
_INLINE_TYPES = {onnx.TensorProto.INT64, onnx.TensorProto.INT32}


def check_output_target(out: str | os.PathLike) -> Path:
    """An output must be a regular file path (existing or not): not `-`, a symbolic link, a device, a FIFO."""
    text = os.fspath(out)
    if text == "-":
        raise UserError("-: writing to standard output is not supported; give a file path (./- for a file named -)")
    if "\0" in text:
        raise UserError(f"{text!r}: a path may not hold a NUL byte")
    out = Path(text)
    if out.is_symlink():
        raise UserError(f"{out}: is a symbolic link (to {os.readlink(out)}); onnxprune does not replace links or "
                        "write through them: give the path of the file itself")
    if out.is_dir():
        raise UserError(f"{out}: output path is a folder")
    if out.exists() and not stat.S_ISREG(out.stat().st_mode):
        raise UserError(f"{out}: is not a regular file (a device, FIFO or socket); onnxprune writes files only")
    return out


def check_output_path(out: str | os.PathLike, *inputs: str | os.PathLike) -> Path:
    """Validate an output path before any work is done."""
    out = check_output_target(out)
    if not out.parent.exists():
        raise UserError(f"{out}: output folder {out.parent} does not exist")
    if not out.parent.is_dir():
        raise UserError(f"{out}: {out.parent} is not a folder")
    for inp in inputs:
        if inp is not None and same_file(out, inp):
            raise UserError(f"{out}: output path is the input {'model' if str(inp).endswith('.onnx') else 'file'} "
                            f"{inp}; refusing to overwrite it")
    if not os.access(out.parent, os.W_OK):
        raise UserError(f"{out}: output folder is not writable")
    return out


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name the same file: the same resolved path (symlinks, `./x`, `..`), or the same
    inode (hard links)."""
    try:
        if os.path.realpath(a) == os.path.realpath(b):
            return True
        sa, sb = os.stat(a), os.stat(b)
    except (OSError, ValueError):
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def _inside(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    return Path(os.path.realpath(folder)) in Path(os.path.realpath(path)).parents


def external_data_files(model_path: str | os.PathLike) -> list[Path]:
    """The external data files a model file refers to (none when it cannot be read: loading says why)."""
    try:
        if not stat.S_ISREG(os.stat(model_path).st_mode):  # a FIFO or a device: loading says why
            return []
        m = onnx.load(str(model_path), load_external_data=False)
    except Exception:
        return []
    found: dict[str, None] = {}
    for t in external_data_helper._get_all_tensors(m):
        if external_data_helper.uses_external_data(t):
            loc = {e.key: e.value for e in t.external_data}.get("location")
            if isinstance(loc, str) and loc and "\0" not in loc:  # invalid names: loading says why
                found[loc] = None
    return [Path(model_path).parent / loc for loc in found]


def check_collisions(outputs: dict[str, str | os.PathLike | None], inputs: dict[str, str | os.PathLike | None],
                     models: Iterable[str] = (), model_outputs: Iterable[str] = ()) -> None:
    """Refuse any two of these paths naming the same file: the outputs (`label -> path`), the external data
    files of the outputs labelled in `model_outputs` (`OUT.data`), the inputs (a file, or a folder whose
    files are all inputs and inside which no output may be written) and the external data files of the
    inputs labelled in `models`."""
    models, model_outputs = set(models), set(model_outputs)
    ins: list[tuple[str, Path]] = []
    folders: list[tuple[str, Path]] = []
    for label, p in inputs.items():
        if p is None:
            continue
        p = Path(p)
        (folders if p.is_dir() else ins).append((label, p))
        if label in models:
            ins += [(f"external data of the {label}", d) for d in external_data_files(p)]
    outs: list[tuple[str, Path]] = []
    for label, p in outputs.items():
        if p is None:
            continue
        outs.append((label, Path(p)))
        if label in model_outputs:
            outs.append((f"{label}'s external data file", Path(str(p) + ".data")))
    for i, (label, p) in enumerate(outs):
        for other, q in ins:
            if same_file(p, q):
                raise UserError(f"{p}: the {label} would overwrite the {other} {q}; give another path")
        for other, q in folders:
            if _inside(p, q):
                raise UserError(f"{p}: the {label} would be written inside the {other} folder {q}; give another path")
        for other, q in outs[:i]:
            if same_file(p, q):
                raise UserError(f"{p}: the {label} and the {other} are the same file; give different paths")


def _cannot_write(path: Path, exc: OSError) -> UserError:
    return UserError(f"{path}: cannot write ({exc.strerror or exc})")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temporary file in the target folder, then rename: no partial file ever. The temporary
    file is created with signals held, so that SIGTERM cannot land between its creation and the code that
    removes it."""
    path = check_output_target(path)
    tmp = None
    umask = os.umask(0)
    os.umask(umask)
    try:
        with _signals_held():
            fd, tmp = tempfile.mkstemp(prefix=".onnxprune-", suffix=".tmp", dir=path.parent or ".")
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; outputs get the usual permissions
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException as exc:
        with _signals_held():
            if tmp is not None and os.path.exists(tmp):
                os.unlink(tmp)
        if isinstance(exc, OSError):
            raise _cannot_write(path, exc) from None
        raise


_held = 0                            # depth of the sections that hold signals
_pending: list[BaseException] = []   # what a signal raised while held, raised when the section ends


@contextlib.contextmanager
def _signals_held():
    """Hold SIGINT, SIGTERM and SIGHUP until the block is done: the operating system keeps them pending
    (`pthread_sigmask`), and one whose Python handler runs inside the block anyway (it arrived just before)
    hands its exception to `deliver`, which keeps it until the block ends. So a temporary file is never
    created or removed halfway, and the two renames of a model and its data happen together."""
    global _held
    held = {getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, n)}
    masking = hasattr(signal, "pthread_sigmask")
    old = signal.pthread_sigmask(signal.SIG_BLOCK, held) if masking else None
    _held += 1
    try:
        yield
    finally:
        _held -= 1
        if masking:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
    if not _held and _pending:
        raise _pending.pop()


def deliver(exc: BaseException) -> None:
    """For a signal handler: raise `exc` now, or when the section holding signals ends."""
    if _held:
        _pending[:] = [exc]
        return
    raise exc


def stays_inline(t: onnx.TensorProto) -> bool:
    """Whether a tensor stays in the model file when the weights go to external data."""
    return not t.HasField("raw_data") or len(t.raw_data) < INLINE_BYTES or t.data_type in _INLINE_TYPES


def save_model(model: onnx.ModelProto, path: str | os.PathLike, external_data: bool | None = None) -> None:
    """Save atomically; large models (or `external_data=True`) keep weights in `<name>.data` beside, except
    small and integer tensors (`stays_inline`). Without a tensor to move out, no data file is written."""
    path = check_output_target(path)
    big = too_big(model) if external_data is None else external_data
    if not big or all(stays_inline(t) for t in model.graph.initializer):
        atomic_write_bytes(path, model.SerializeToString())
        return
    data_name = path.name + ".data"
    check_output_target(path.parent / data_name)
    tmpdir = None
    try:
        with _signals_held():  # created where the finally below removes it, whenever a signal lands
            tmpdir = tempfile.mkdtemp(dir=path.parent or ".", prefix=".onnxprune-")
        tmp_model, tmp_data = Path(tmpdir) / path.name, Path(tmpdir) / data_name
        stub = structure(model)  # the weights go to the data file, not into a copy of the model
        with open(tmp_data, "wb") as f:
            for t in model.graph.initializer:
                if stays_inline(t):
                    stub.graph.initializer.append(t)
                    continue
                if len(t.raw_data) >= 1 << 20:
                    f.write(b"\0" * (-f.tell() % 4096))  # large tensors page-aligned, for memory mapping
                ref = onnx.TensorProto(name=t.name, dims=t.dims, data_type=t.data_type, doc_string=t.doc_string,
                                       raw_data=b"")
                external_data_helper.set_external_data(ref, data_name, offset=f.tell(), length=len(t.raw_data))
                ref.ClearField("raw_data")
                ref.data_location = onnx.TensorProto.EXTERNAL
                f.write(t.raw_data)
                stub.graph.initializer.append(ref)
        tmp_model.write_bytes(stub.SerializeToString())
        with _signals_held():  # the two renames happen together or not at all
            os.replace(tmp_data, path.parent / data_name)
            os.replace(tmp_model, path)
    except OSError as exc:
        raise _cannot_write(path, exc) from None
    finally:
        if tmpdir is not None:
            with _signals_held():
                shutil.rmtree(tmpdir, ignore_errors=True)
