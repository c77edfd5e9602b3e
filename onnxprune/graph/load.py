"""Loading ONNX models with clear errors: external data, names, tensor sizes, opset, checker and
strict shape inference."""
from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import numpy as np
import onnx
import onnx.version_converter
from onnx import external_data_helper

from ..errors import UnsupportedModel, UserError
from .skeleton import skeleton

log = logging.getLogger("onnxprune")

MIN_OPSET, MAX_OPSET = 11, 25  # 22-25 add tensor types to the ops the handlers know, no semantics


_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder"))


def check_regular_file(path: str | os.PathLike, what: str = "file") -> Path:
    """`path` must name a regular file (through symbolic links): a FIFO would block the read forever, a
    device (`/dev/zero`, `/dev/urandom`) would never end, so both are refused before anything is read."""
    text = os.fspath(path)
    if "\0" in text:
        raise UserError(f"{text!r}: a path may not hold a NUL byte")
    p = Path(text)
    try:
        mode = p.stat().st_mode
    except FileNotFoundError:
        raise UserError(f"{p}: no such {what}") from None
    except OSError as exc:
        raise UserError(f"{p}: cannot read ({exc.strerror or exc})") from None
    if not stat.S_ISREG(mode):
        kind = next((k for test, k in _KINDS if test(mode)), "not a regular file")
        raise UserError(f"{p}: is {kind}, expected {what}" if kind.startswith("a ") else f"{p}: {kind}")
    return p


def _check_external_locations(model: onnx.ModelProto, base: Path) -> None:
    """Refuse external-data locations that escape the model's folder or are not regular files."""
    base = base.resolve()
    for tensor in external_data_helper._get_all_tensors(model):
        if not external_data_helper.uses_external_data(tensor):
            continue
        info = {e.key: e.value for e in tensor.external_data}
        loc = info.get("location", "")
        if "\0" in loc:
            raise UserError(f"tensor '{tensor.name}': external data location {loc!r} holds a NUL byte")
        if not loc or os.path.isabs(loc):
            raise UserError(f"tensor '{tensor.name}': external data location '{loc}' is not a relative path")
        target = (base / loc).resolve()
        if base not in target.parents:
            raise UserError(f"tensor '{tensor.name}': external data location '{loc}' escapes the model folder {base}")
        if not target.exists():
            raise UserError(f"tensor '{tensor.name}': external data file {target} not found")
        check_regular_file(target, f"the external data file of tensor '{tensor.name}'")


def _check_names(model: onnx.ModelProto, what: str) -> None:
    """Names, external-data entries and string attributes must be text (protobuf does not check UTF-8 in
    ONNX's proto2)."""
    def texts():
        g = model.graph
        for v in list(g.input) + list(g.output) + list(g.value_info):
            yield v.name
        for n in g.node:
            yield n.name
            yield from n.input
            yield from n.output
        for t in external_data_helper._get_all_tensors(model):
            yield t.name
            for e in t.external_data:
                yield e.key
                yield e.value
    for text in texts():
        if not isinstance(text, str):
            raise UserError(f"{what}: holds a name that is not valid UTF-8 text ({text!r:.60})")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise UserError(f"{what}: holds a name that is not valid UTF-8 text ({text!r:.60})") from None
    for n in model.graph.node:  # string attributes are bytes in the proto; importers decode them as UTF-8
        for a in n.attribute:
            for raw in ([a.s] if a.type == onnx.AttributeProto.STRING else list(a.strings)):
                try:
                    raw.decode("utf-8")
                except UnicodeDecodeError:
                    raise UserError(f"{what}: node '{n.name}' attribute '{a.name}' is not valid UTF-8 text "
                                    f"({raw!r:.60})") from None


_ITEMSIZE = {onnx.TensorProto.FLOAT: 4, onnx.TensorProto.FLOAT16: 2, onnx.TensorProto.BFLOAT16: 2,
             onnx.TensorProto.DOUBLE: 8, onnx.TensorProto.INT64: 8, onnx.TensorProto.INT32: 4,
             onnx.TensorProto.INT16: 2, onnx.TensorProto.INT8: 1, onnx.TensorProto.UINT8: 1,
             onnx.TensorProto.BOOL: 1, onnx.TensorProto.UINT64: 8, onnx.TensorProto.UINT32: 4,
             onnx.TensorProto.UINT16: 2}


def _check_tensor_sizes(model: onnx.ModelProto, what: str) -> None:
    """Raw tensor data must be exactly as long as the declared shape needs."""
    for t in model.graph.initializer:
        size = _ITEMSIZE.get(t.data_type)
        if size is None or not t.HasField("raw_data"):
            continue
        need = int(np.prod(t.dims, dtype=np.int64)) * size
        if len(t.raw_data) != need:
            raise UserError(f"{what}: tensor '{t.name}' holds {len(t.raw_data)} bytes, its shape "
                            f"{list(t.dims)} needs {need}")


def uses_external_data(model: onnx.ModelProto) -> bool:
    return any(external_data_helper.uses_external_data(t)
               for t in external_data_helper._get_all_tensors(model))


def path_uses_external_data(path: str | os.PathLike) -> bool:
    """Whether the model file keeps its weights in external data files (checked without loading them)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # never block on a FIFO or read a device
            return False
        return uses_external_data(onnx.load(str(path), load_external_data=False))
    except Exception:
        return False


def load_model(path: str | os.PathLike) -> onnx.ModelProto:
    """Load a model (and its external data, if any) with clear errors for bad files."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file")
    if path.is_dir():
        raise UserError(f"{path}: is a folder, expected an .onnx file")
    check_regular_file(path, "an .onnx file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises various DecodeError flavours
        raise UserError(f"{path}: not a readable ONNX model ({type(exc).__name__})") from None
    if not model.HasField("graph") or len(model.graph.node) == 0:
        raise UserError(f"{path}: not an ONNX model (no graph or no nodes)")
    _check_names(model, str(path))
    try:
        _check_external_locations(model, path.parent)
    except UserError as exc:
        raise UserError(f"{path}: {exc}") from None
    if uses_external_data(model):
        try:
            onnx.load_external_data_for_model(model, str(path.parent))
        except Exception as exc:
            raise UserError(f"{path}: cannot read external data ({exc})") from None
    _check_tensor_sizes(model, str(path))
    model = with_supported_opset(model, str(path))
    check_model(model, str(path))
    return model


def default_opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    raise UnsupportedModel("model imports no default ONNX opset")


def with_supported_opset(model: onnx.ModelProto, what: str = "model") -> onnx.ModelProto:
    """`model`, or for an opset below MIN_OPSET (the ONNX model zoo's opset 7-10 models, old exporters) a copy
    raised to MIN_OPSET by ONNX's version converter (Upsample becomes Resize, and so on); the written model
    then carries that opset. A model the converter cannot raise is refused, naming why. The input is not
    modified."""
    opset = _opset(model, what)
    if opset >= MIN_OPSET:
        return model
    try:
        raised = onnx.version_converter.convert_version(model, MIN_OPSET)
    except Exception as exc:
        raise UnsupportedModel(f"{what}: {_not_supported(opset)}, and ONNX's version converter cannot raise it to "
                               f"{MIN_OPSET}: {_first_line(str(exc), exc)}") from None
    log.info("%s: opset %d raised to %d by ONNX's version converter; the pruned model carries opset %d",
             what, opset, MIN_OPSET, MIN_OPSET)
    return raised


def _opset(model: onnx.ModelProto, what: str) -> int:
    try:
        return default_opset(model)
    except UnsupportedModel as exc:
        raise UnsupportedModel(f"{what}: {exc}") from None


def _not_supported(opset: int) -> str:
    return f"opset {opset} is not supported (supported: {MIN_OPSET} to {MAX_OPSET})"


def _first_line(text: str, exc: Exception) -> str:
    """The first line of an ONNX error message, or the exception's type when it has none."""
    text = text.strip()
    return text.splitlines()[0] if text else type(exc).__name__


def check_model(model: onnx.ModelProto, what: str = "model") -> None:
    """Opset range and the ONNX checker; raise UserError naming `what`."""
    opset = _opset(model, what)
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise UnsupportedModel(f"{what}: {_not_supported(opset)}")
    # on the structure: serialising the weights would cost several copies of them (and fails over
    # 2 GB); their byte counts are checked by _check_tensor_sizes
    structure_only = skeleton(model)
    try:
        onnx.checker.check_model(structure_only)
    except Exception as exc:
        raise UserError(f"{what}: fails the ONNX checker: {_first_line(str(exc), exc)}") from None
    _check_inference(structure_only, what)


def _check_inference(model: onnx.ModelProto, what: str) -> None:
    """Strict ONNX shape and type inference: catches what the checker lets through (attributes of the
    wrong length, shapes that cannot be, type clashes) and would otherwise be copied into the output."""
    try:
        onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except Exception as exc:
        text = str(exc).replace("[ShapeInferenceError] Inference error(s): ", "")
        raise UserError(f"{what}: fails ONNX shape inference: {_first_line(text, exc)}") from None
