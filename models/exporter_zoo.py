"""Exporter zoo: real graphs from ONNX exporters other than PyTorch's.

  * tf2onnx (TensorFlow / Keras, NHWC inputs): Keras applications MobileNetV2, ResNet50, EfficientNetB0,
    DenseNet121, MobileNetV3Small (weights=None) and a tiny Conv/BatchNorm/ReLU/Flatten/Dense CNN, built
    with Keras 3 (tf.keras of TF >= 2.16), plus the same tiny CNN built with legacy Keras 2 (tf_keras).
    Keras 3's Flatten is exported as Reshape(x, Concat(Slice(Shape(x)), [H*W*C])); Keras 2's as
    Reshape(x, [-1, H*W*C]).
  * paddle2onnx (PaddlePaddle, NCHW inputs): paddle.vision.models mobilenet_v2, resnet18,
    shufflenet_v2_x0_5 (pretrained=False), a tiny DB-style text detector (conv backbone with biases,
    nearest-upsample FPN neck with add + concat, ConvTranspose head) and a tiny CRNN-style recognizer
    (convs, height pooled away, BiLSTM or FC head), at opsets 11 and 13 through `paddle.onnx.export`
    (Polygraphy constant folding: conv biases become Add(Conv, initializer [1, C, 1, 1])) and at opset
    11 "raw" (`paddle2onnx --optimize_tool None`: weights stay Constant nodes, conv biases are
    Add(Conv, Reshape(Constant, Constant))). `*_dynhw` graphs have dynamic H and W as well as batch.
  * `tiny_db_scale` upsamples with scale_factor as PaddleOCR's DB neck does; paddle 3.3.x programs
    fail to convert there ("the 0th elementwise MUST be ir::FloatAttribute", paddle2onnx 2.0.1 and 2.1.0
    alike), paddle 3.0.0 - 3.2.2 convert it.

Versions used (Python 3.11): tensorflow-cpu 2.21.0 + tf2onnx 1.17.0 + tf-keras 2.21.0 (keras 3.15.1);
paddlepaddle 3.2.2 + paddle2onnx 2.1.0 (pins onnx <= 1.17.0). paddle2onnx 2.0.1 optimises with
onnxoptimizer instead of Polygraphy by default: its `paddle.onnx.export` graphs look like the raw ones
here (Constant-node weights, Reshape'd biases). tf2onnx's from_keras needs a Keras 3 model whose output
names match its layers' (a Functional model with a named output layer; a Sequential model fails
with KeyError 'keras_tensor_N').

Weights are random (seeded): conv / dense biases are random, BatchNorm gamma / beta are random and the
moving statistics are first calibrated on a seeded random batch (one training-mode pass with momentum 0,
so activations stay O(1) through deep nets), then perturbed, so no BatchNorm is the identity.

Each framework runs in its own virtual environment (they pin onnx / protobuf versions of their own):

    /work/venv-tf/bin/python     models/exporter_zoo.py --framework tf     --out models/cache/exporter_zoo
    /work/venv-paddle/bin/python models/exporter_zoo.py --framework paddle --out models/cache/exporter_zoo

`DIR/index.json` lists every graph: file, framework and exporter versions, opset, input name / shape
(None = dynamic) / dtype / layout, output name / shape, and the reference `.npz` (keys `input`,
`output`: a fixed seeded input and the framework's own output on it), so a test can check that
onnxruntime reproduces the framework. Exports that fail are listed under `failures` with the error.
Graphs already in the index with their files present are skipped unless --force.

Importing this module imports neither TensorFlow nor Paddle (only numpy and the standard library);
each framework is imported inside its own builder functions. `load_index(DIR)` reads the manifest.
Build one framework per process: where both are installed, importing paddle after tensorflow in one
process segfaults (paddle 3.x, TF 2.21); the other order, and torch with either, import fine.
A full build takes about 1.5-3 min for tf (most of it ResNet50, DenseNet121, EfficientNetB0) and
about 15 s for paddle on a 2-core machine; the cache holds about 570 MB (ResNet50 is 94 MB a file).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import pathlib
import sys
import tempfile
import time
import traceback

import numpy as np

SEED = 0
REF_BATCH = 2      # batch of the reference input (the exported batch axis is dynamic)
CALIB_BATCH = 8    # batch of the BatchNorm calibration pass
INDEX = "index.json"
TF_OPSETS = (13, 17)
PADDLE_EXPORTS = ((11, False), (13, False), (11, True))  # (opset, raw)
TF_SIZE = 96       # Keras applications accept >= 32 with weights=None; 96 keeps a 3x3 last feature map
DYN_HW = 64        # H = W of the reference input of the graphs exported with dynamic spatial dims (*_dynhw)


# ----------------------------------------------------------------------------------------------- manifest
def load_index(out_dir) -> dict:
    """The manifest of `out_dir`: {"graphs": [entry, ...], "failures": [...], "build_times": {...}}."""
    p = pathlib.Path(out_dir) / INDEX
    if not p.exists():
        return {"graphs": [], "failures": [], "build_times": {}}
    d = json.loads(p.read_text())
    d.setdefault("graphs", []), d.setdefault("failures", []), d.setdefault("build_times", {})
    return d


def graph_names(framework: str) -> list[str]:
    """The names of the graphs a full build of `framework` ('tf' or 'paddle') writes."""
    if framework == "tf":
        return [f"tf_{name}_op{op}" for name, *_ in tf_models() for op in TF_OPSETS]
    return [f"paddle_{name}_op{op}" + ("_raw" if raw else "") for name, *_ in paddle_models()
            for op, raw in PADDLE_EXPORTS]


def random_input(entry: dict, batch: int, seed: int) -> dict:
    """Seeded uniform inputs in the graph's input range (dynamic H and W at DYN_HW), as the builders draw."""
    rng = np.random.default_rng(seed)
    shape = (batch, *_concrete(tuple(entry["input"]["shape"][1:])))
    return {entry["input"]["name"]: rng.uniform(*entry["input_range"], shape).astype(np.float32)}


def _write_index(out_dir: pathlib.Path, framework: str, entries: list, failures: list, seconds: float,
                 versions: dict) -> None:
    idx = load_index(out_dir)
    names = {e["name"] for e in entries} | {f["name"] for f in failures}
    idx["graphs"] = sorted([e for e in idx["graphs"] if e["name"] not in names] + entries,
                           key=lambda e: e["name"])
    idx["failures"] = sorted([f for f in idx["failures"] if f["name"] not in names] + failures,
                             key=lambda f: f["name"])
    idx["build_times"][framework] = {"seconds": round(seconds, 1), "versions": versions}
    tmp = out_dir / (INDEX + ".tmp")
    tmp.write_text(json.dumps(idx, indent=1) + "\n")
    tmp.replace(out_dir / INDEX)


def _cached(out_dir: pathlib.Path, name: str):
    for e in load_index(out_dir)["graphs"]:
        if e["name"] == name and (out_dir / e["file"]).exists() and (out_dir / e["reference"]).exists():
            return e
    return None


@contextlib.contextmanager
def _quiet_fds(log_path: pathlib.Path):
    """Send fd 1 and 2 (the C++ loggers of TF / Paddle write there directly) to `log_path`."""
    sys.stdout.flush(), sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log_path, "ab") as f:
        os.dup2(f.fileno(), 1), os.dup2(f.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush(), sys.stderr.flush()
            os.dup2(saved[0], 1), os.dup2(saved[1], 2)
            os.close(saved[0]), os.close(saved[1])


def _log_tail(log_path: pathlib.Path, n: int = 1500) -> str:
    try:
        return log_path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def _io_info(path: pathlib.Path) -> tuple[dict, dict, int]:
    """(input, output, opset) as the ONNX file declares them; symbolic dims become None."""
    import onnx
    m = onnx.load(str(path), load_external_data=False)

    def desc(vi):
        t = vi.type.tensor_type
        return {"name": vi.name, "shape": [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim],
                "dim_params": [d.dim_param if d.HasField("dim_param") else None for d in t.shape.dim],
                "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name}
    opset = next(o.version for o in m.opset_import if o.domain in ("", "ai.onnx"))
    init = {i.name for i in m.graph.initializer}
    inputs = [desc(v) for v in m.graph.input if v.name not in init]
    assert len(inputs) == 1 and len(m.graph.output) == 1, (inputs, m.graph.output)
    return inputs[0], desc(m.graph.output[0]), opset


def _ort_diff(path: pathlib.Path, x: np.ndarray, y: np.ndarray) -> float | None:
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    so = ort.SessionOptions()
    so.log_severity_level = 3  # paddle2onnx's raw graphs keep unused initializers: ORT warns per initializer
    s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    out = s.run(None, {s.get_inputs()[0].name: x})[0]
    return float(np.max(np.abs(out.astype(np.float64) - y)))


def _finish(out_dir: pathlib.Path, name: str, model: str, framework: str, exporter: str, versions: dict,
            layout: str, x: np.ndarray, y: np.ndarray, low_high, export_s: float, notes: str) -> dict:
    path = out_dir / f"{name}.onnx"
    ref = out_dir / f"{name}.npz"
    np.savez(ref, input=x, output=y)
    inp, out, opset = _io_info(path)
    inp["layout"] = layout
    ops, flatten = _op_summary(path)
    return {"name": name, "model": model, "file": path.name, "reference": ref.name,
            "framework": framework, "framework_version": versions[framework],
            "exporter": exporter, "exporter_version": versions[exporter], "versions": versions,
            "opset": opset, "input": inp, "output": out, "input_range": list(low_high), "seed": SEED,
            "size_bytes": path.stat().st_size, "export_s": round(export_s, 2),
            "ort_max_abs_diff": _ort_diff(path, x, y), "output_max_abs": float(np.max(np.abs(y))),
            "ops": ops, "reshape_shape_from_concat": flatten, "notes": notes}


def _op_summary(path: pathlib.Path) -> tuple[dict, list]:
    """Op-type counts, and the Reshapes whose shape input is computed by a Concat (a Flatten written as
    Reshape(x, Concat(Slice(Shape(x)), [C])) rather than with a constant shape)."""
    import onnx
    m = onnx.load(str(path), load_external_data=False)
    ops: dict = {}
    for n in m.graph.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
    producer = {o: n for n in m.graph.node for o in n.output}

    def through_casts(name):
        n = producer.get(name)
        while n is not None and n.op_type in ("Cast", "Identity"):
            n = producer.get(n.input[0])
        return n
    flat = [n.name for n in m.graph.node if n.op_type == "Reshape" and len(n.input) > 1
            and (c := through_casts(n.input[1])) is not None and c.op_type == "Concat"]
    return dict(sorted(ops.items())), flat


def _concrete(shape: tuple) -> tuple:
    """The reference / calibration shape of an input shape whose spatial dims may be None (dynamic)."""
    return tuple(DYN_HW if d is None else d for d in shape)


# --------------------------------------------------------------------------------------- TensorFlow
def tf_models() -> list[tuple[str, str, tuple, tuple, str]]:
    """(name, keras flavour, NHWC input shape, input range, notes) of the tf2onnx graphs."""
    s = (TF_SIZE, TF_SIZE, 3)
    return [
        ("mobilenet_v2", "keras3", s, (-1.0, 1.0), "keras.applications.MobileNetV2(alpha=0.35)"),
        ("resnet50", "keras3", s, (-1.0, 1.0), "keras.applications.ResNet50"),
        ("efficientnet_b0", "keras3", s, (0.0, 255.0),
         "keras.applications.EfficientNetB0 (Rescaling + Normalization preprocessing inside)"),
        ("densenet121", "keras3", s, (-1.0, 1.0), "keras.applications.DenseNet121"),
        ("mobilenet_v3_small", "keras3", s, (0.0, 255.0),
         "keras.applications.MobileNetV3Small(alpha=0.75) (Rescaling preprocessing inside)"),
        ("mobilenet_v2_dynhw", "keras3", (None, None, 3), (-1.0, 1.0),
         f"keras.applications.MobileNetV2(alpha=0.35, include_top=False, pooling='avg', input_shape=(None, None, 3)) "
         f"+ Dense(10): dynamic H and W "
         f"(reference input {DYN_HW}x{DYN_HW})"),
        ("tiny_cnn", "keras3", (32, 32, 3), (-1.0, 1.0),
         "Conv/BN/ReLU x2, Flatten, Dense/ReLU, Dense; Keras 3 Flatten -> Reshape(x, Concat(Slice(Shape(x)), [C]))"),
        ("tiny_cnn_k2", "keras2", (32, 32, 3), (-1.0, 1.0),
         "same CNN in legacy Keras 2 (tf_keras); Flatten -> Reshape(x, [-1, C])"),
    ]


def _tf_build(name: str, flavour: str, shape: tuple):
    if flavour == "keras2":
        import tf_keras as keras
    else:
        import keras
    keras.utils.set_random_seed(SEED)
    common = dict(input_shape=shape, weights=None, classes=10, classifier_activation=None)
    app = keras.applications
    if name == "mobilenet_v2":
        return keras, app.MobileNetV2(alpha=0.35, **common)
    if name == "mobilenet_v2_dynhw":  # include_top needs a static input shape: pooled base + Dense head
        base = app.MobileNetV2(alpha=0.35, include_top=False, pooling="avg", weights=None, input_shape=shape)
        return keras, keras.Model(base.input, keras.layers.Dense(10, name="predictions")(base.output), name=name)
    if name == "resnet50":
        return keras, app.ResNet50(**common)
    if name == "efficientnet_b0":
        return keras, app.EfficientNetB0(**common)
    if name == "densenet121":
        return keras, app.DenseNet121(**common)
    if name == "mobilenet_v3_small":
        return keras, app.MobileNetV3Small(alpha=0.75, **common)
    if name.startswith("tiny_cnn"):
        L = keras.layers
        inp = keras.Input(shape, name="input")
        x = L.Conv2D(8, 3, padding="same", use_bias=False, name="conv1")(inp)
        x = L.ReLU(name="relu1")(L.BatchNormalization(name="bn1")(x))
        x = L.Conv2D(16, 3, strides=2, padding="same", use_bias=False, name="conv2")(x)
        x = L.ReLU(name="relu2")(L.BatchNormalization(name="bn2")(x))
        x = L.Conv2D(16, 3, strides=2, padding="same", use_bias=False, name="conv3")(x)
        x = L.ReLU(name="relu3")(L.BatchNormalization(name="bn3")(x))
        x = L.Flatten(name="flatten")(x)
        x = L.Dense(32, activation="relu", name="fc1")(x)
        out = L.Dense(10, name="logits")(x)
        return keras, keras.Model(inp, out, name=name)
    raise ValueError(name)


def _tf_randomize(keras, model, calib: np.ndarray, rng: np.random.Generator) -> None:
    """Random biases and BN affine parameters; BN moving stats calibrated on `calib`, then perturbed."""
    bns = [bn for bn in _tf_layers(model) if isinstance(bn, keras.layers.BatchNormalization)]
    for layer in _tf_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            if layer.gamma is not None:
                layer.gamma.assign(rng.uniform(0.5, 1.5, layer.gamma.shape).astype("float32"))
            if layer.beta is not None:
                layer.beta.assign(rng.normal(0.0, 0.2, layer.beta.shape).astype("float32"))
        elif getattr(layer, "bias", None) is not None and hasattr(layer.bias, "assign"):
            layer.bias.assign(rng.normal(0.0, 0.05, layer.bias.shape).astype("float32"))
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.momentum = 0.0
    model(calib, training=True)
    for bn, m in zip(bns, momenta):
        bn.momentum = m
    for bn in bns:
        var = np.asarray(bn.moving_variance.numpy(), np.float64)
        mean = np.asarray(bn.moving_mean.numpy(), np.float64)
        bn.moving_mean.assign((mean + 0.1 * np.sqrt(var) * rng.standard_normal(mean.shape)).astype("float32"))
        bn.moving_variance.assign((var * rng.uniform(0.7, 1.4, var.shape)).astype("float32"))


def _tf_layers(model):
    for layer in model.layers:
        if hasattr(layer, "layers") and layer.layers and layer is not model:
            yield from _tf_layers(layer)
        else:
            yield layer


def build_tf(out_dir, names=None, opsets=TF_OPSETS, force: bool = False) -> tuple[list, list]:
    """Build and export the tf2onnx graphs missing from `out_dir`; returns (entries, failures)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    out_dir = pathlib.Path(out_dir)
    (out_dir / "logs").mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    with _quiet_fds(out_dir / "logs" / "tf_import.log"):
        import keras
        import tensorflow as tf
        import tf2onnx
    versions = {"tensorflow": tf.__version__, "keras": keras.__version__, "tf2onnx": tf2onnx.__version__}
    try:
        import tf_keras
        versions["tf_keras"] = tf_keras.__version__
    except ImportError:
        pass
    import onnx
    versions["onnx"] = onnx.__version__
    entries, failures = [], []
    for name, flavour, shape, low_high, notes in tf_models():
        if names and name not in names:
            continue
        todo = [op for op in opsets if force or not _cached(out_dir, f"tf_{name}_op{op}")]
        entries += [_cached(out_dir, f"tf_{name}_op{op}") for op in opsets if op not in todo]
        if not todo:
            continue
        rng = np.random.default_rng(SEED)
        calib = rng.uniform(*low_high, (CALIB_BATCH, *_concrete(shape))).astype("float32")
        x = rng.uniform(*low_high, (REF_BATCH, *_concrete(shape))).astype("float32")
        log = out_dir / "logs" / f"tf_{name}.log"
        log.unlink(missing_ok=True)
        try:
            with _quiet_fds(log):
                k, model = _tf_build(name, flavour, shape)
                _tf_randomize(k, model, calib, rng)
                y = np.asarray(model(x, training=False), np.float32)
        except Exception as e:
            failures += [{"name": f"tf_{name}_op{op}", "stage": "build",
                          "error": f"{type(e).__name__}: {e}"[:2000], "log_tail": _log_tail(log)} for op in todo]
            continue
        if flavour == "keras2":
            notes += f"; tf_keras {versions.get('tf_keras')}"
        for op in todo:
            gname = f"tf_{name}_op{op}"
            path = out_dir / f"{gname}.onnx"
            t0 = time.perf_counter()
            try:
                with _quiet_fds(log):
                    spec = (tf.TensorSpec((None, *shape), tf.float32, name="input"),)
                    tf2onnx.convert.from_keras(model, input_signature=spec, opset=op, output_path=str(path))
                dt = time.perf_counter() - t0
                entries.append(_finish(out_dir, gname, name, "tensorflow", "tf2onnx", versions, "NHWC", x, y,
                                       low_high, dt, notes))
                print(f"{gname}: {dt:.1f} s, {path.stat().st_size / 1e6:.1f} MB, "
                      f"ort diff {entries[-1]['ort_max_abs_diff']:.2e} (|y| <= {entries[-1]['output_max_abs']:.2f})",
                      flush=True)
            except (Exception, SystemExit) as e:  # paddle2onnx calls sys.exit() when a conversion fails
                path.unlink(missing_ok=True)
                failures.append({"name": gname, "stage": "export", "error": f"{type(e).__name__}: {e}"[:2000],
                                 "log_tail": _log_tail(log), "traceback": traceback.format_exc()[-2000:]})
                print(f"{gname}: FAILED {type(e).__name__}: {str(e)[:300]}", flush=True)
        del model
    seconds = time.perf_counter() - t_all
    _write_index(out_dir, "tf", [e for e in entries if e], failures, seconds, versions)
    print(f"tf: {len(entries)} graphs, {len(failures)} failures, {seconds:.0f} s", flush=True)
    return entries, failures


# ---------------------------------------------------------------------------------------- Paddle
def paddle_models() -> list[tuple[str, tuple, tuple, str]]:
    """(name, NCHW input shape without batch, input range, notes) of the paddle2onnx graphs."""
    return [
        ("mobilenet_v2", (3, 96, 96), (-1.0, 1.0), "paddle.vision.models.mobilenet_v2(scale=1.0)"),
        ("resnet18", (3, 96, 96), (-1.0, 1.0), "paddle.vision.models.resnet18"),
        ("shufflenet_v2_x0_5", (3, 96, 96), (-1.0, 1.0), "paddle.vision.models.shufflenet_v2_x0_5"),
        ("tiny_db", (3, 64, 64), (-1.0, 1.0),
         "DB-style detector: conv backbone (biases) + nearest upsample (by size) + add/concat FPN neck + "
         "ConvTranspose head"),
        ("tiny_db_scale", (3, 64, 64), (-1.0, 1.0),
         "tiny_db upsampling with F.interpolate(scale_factor=2.0 / 4.0) as PaddleOCR's DB FPN does"),
        ("tiny_db_dynhw", (3, None, None), (-1.0, 1.0),
         f"tiny_db with dynamic H and W, as OCR detectors are exported (reference input {DYN_HW}x{DYN_HW})"),
        ("resnet18_dynhw", (3, None, None), (-1.0, 1.0),
         f"paddle.vision.models.resnet18 with dynamic H and W (reference input {DYN_HW}x{DYN_HW})"),
        ("tiny_crnn_lstm", (3, 32, 64), (-1.0, 1.0),
         "CRNN-style recognizer: convs, height pooled to 1, [N,C,1,W] -> [N,W,C], BiLSTM, Linear"),
        ("tiny_crnn_fc", (3, 32, 64), (-1.0, 1.0),
         "CRNN-style recognizer without RNN: convs, height pooled to 1, reshape/transpose, Linear x2"),
    ]


def _paddle_build(name: str):
    import paddle
    import paddle.nn.functional as F
    from paddle import nn
    paddle.seed(SEED)
    vm = paddle.vision.models
    if name == "mobilenet_v2":
        return vm.mobilenet_v2(pretrained=False, num_classes=10)
    if name in ("resnet18", "resnet18_dynhw"):
        return vm.resnet18(pretrained=False, num_classes=10)
    if name == "shufflenet_v2_x0_5":
        return vm.shufflenet_v2_x0_5(pretrained=False, num_classes=10)

    def cbr(cin, cout, k=3, s=1, bias=True):
        return nn.Sequential(nn.Conv2D(cin, cout, k, s, padding=k // 2, bias_attr=None if bias else False),
                             nn.BatchNorm2D(cout), nn.ReLU())

    if name in ("tiny_db", "tiny_db_dynhw", "tiny_db_scale"):
        by_scale = name == "tiny_db_scale"

        class TinyDB(nn.Layer):
            def __init__(self):
                super().__init__()
                self.c1, self.c2 = cbr(3, 8, s=2), cbr(8, 16, s=2)     # 1/2, 1/4
                self.c3, self.c4 = cbr(16, 24, s=2), cbr(24, 32, s=2)  # 1/8, 1/16
                self.in2, self.in3, self.in4 = (nn.Conv2D(c, 16, 1) for c in (16, 24, 32))
                self.p2, self.p3, self.p4 = (nn.Conv2D(16, 8, 3, padding=1) for _ in range(3))
                self.head = nn.Sequential(
                    nn.Conv2D(24, 8, 3, padding=1, bias_attr=False), nn.BatchNorm2D(8), nn.ReLU(),
                    nn.Conv2DTranspose(8, 8, 2, 2), nn.BatchNorm2D(8), nn.ReLU(),
                    nn.Conv2DTranspose(8, 1, 2, 2), nn.Sigmoid())

            def forward(self, x):
                f2 = self.c2(self.c1(x))
                f3 = self.c3(f2)
                f4 = self.c4(f3)
                # upsampling by size= (tiny_db, tiny_db_dynhw): paddle2onnx 2.1.0 fails on paddle 3.3.1's
                # nearest_interp with scale_factor ("the 0th elementwise MUST be ir::FloatAttribute");
                # tiny_db_scale keeps scale_factor, as PaddleOCR's DB FPN writes it (paddle 3.0 exports it)
                def up(t, like):  # to_static: like.shape[2:] is ints when H, W are static, tensors if dynamic
                    if by_scale:
                        return F.interpolate(t, scale_factor=float(like.shape[2] // t.shape[2]), mode="nearest")
                    return F.interpolate(t, size=like.shape[2:], mode="nearest")
                i4 = self.in4(f4)
                i3 = self.in3(f3)
                i3 = i3 + up(i4, i3)
                i2 = self.in2(f2)
                i2 = i2 + up(i3, i2)
                p2 = self.p2(i2)
                return self.head(paddle.concat([up(self.p4(i4), p2), up(self.p3(i3), p2), p2], axis=1))
        return TinyDB()
    if name.startswith("tiny_crnn"):
        lstm = name.endswith("lstm")

        class TinyCRNN(nn.Layer):
            def __init__(self):
                super().__init__()
                self.body = nn.Sequential(cbr(3, 8), nn.MaxPool2D(2, 2),           # 16 x 32
                                          cbr(8, 16), nn.MaxPool2D(2, 2),          # 8 x 16
                                          cbr(16, 32), nn.MaxPool2D((2, 1), (2, 1)),  # 4 x 16
                                          cbr(32, 32, bias=False))
                if lstm:
                    self.rnn = nn.LSTM(32, 16, direction="bidirect")
                else:
                    self.fc0 = nn.Linear(32, 32)
                self.fc = nn.Linear(32, 11)

            def forward(self, x):
                f = self.body(x)
                f = paddle.mean(f, axis=2, keepdim=True)                          # [N, C, 1, W]
                f = paddle.squeeze(f, axis=2).transpose([0, 2, 1])                 # [N, W, C]
                if lstm:
                    f, _ = self.rnn(f)
                else:
                    f = F.relu(self.fc0(f))
                return self.fc(f)
        return TinyCRNN()
    raise ValueError(name)


def _paddle_randomize(model, calib: np.ndarray, rng: np.random.Generator) -> None:
    import paddle
    from paddle import nn
    bns = [bn for bn in model.sublayers() if isinstance(bn, (nn.BatchNorm2D, nn.BatchNorm))]
    for layer in model.sublayers():
        if isinstance(layer, (nn.BatchNorm2D, nn.BatchNorm)):
            if layer.weight is not None:
                layer.weight.set_value(rng.uniform(0.5, 1.5, layer.weight.shape).astype("float32"))
            if layer.bias is not None:
                layer.bias.set_value(rng.normal(0.0, 0.2, layer.bias.shape).astype("float32"))
        elif isinstance(layer, nn.LSTM):
            for n, p in layer.named_parameters():
                if "bias" in n:
                    p.set_value(rng.normal(0.0, 0.05, p.shape).astype("float32"))
        elif getattr(layer, "bias", None) is not None and isinstance(layer.bias, paddle.Tensor):
            layer.bias.set_value(rng.normal(0.0, 0.05, layer.bias.shape).astype("float32"))
    momenta = [bn._momentum for bn in bns]
    for bn in bns:
        bn._momentum = 0.0
    model.train()
    with paddle.no_grad():
        model(paddle.to_tensor(calib))
    model.eval()
    for bn, m in zip(bns, momenta):
        bn._momentum = m
    for bn in bns:
        var = bn._variance.numpy().astype(np.float64)
        mean = bn._mean.numpy().astype(np.float64)
        bn._mean.set_value((mean + 0.1 * np.sqrt(var) * rng.standard_normal(mean.shape)).astype("float32"))
        bn._variance.set_value((var * rng.uniform(0.7, 1.4, var.shape)).astype("float32"))


def _paddle_export(paddle, paddle2onnx, model, shape: tuple, path: pathlib.Path, opset: int, raw: bool) -> None:
    """`paddle.onnx.export` (jit.save + paddle2onnx + Polygraphy constant folding), or with `raw` the
    same as `paddle2onnx --optimize_tool None` on the jit.save'd inference model: no folding, weights
    stay Constant nodes and conv biases stay Add(Conv, Reshape(Constant, Constant))."""
    spec = [paddle.static.InputSpec([None, *shape], "float32", "x")]
    with tempfile.TemporaryDirectory() as tmp:
        prefix = os.path.join(tmp, "model")
        if raw:
            paddle.jit.save(model, prefix, input_spec=spec)
            prog = prefix + ".json" if os.path.exists(prefix + ".json") else prefix + ".pdmodel"
            paddle2onnx.export(prog, prefix + ".pdiparams", prefix + ".onnx", opset_version=opset,
                               auto_upgrade_opset=False, optimize_tool="None")
        else:
            paddle.onnx.export(model, prefix, input_spec=spec, opset_version=opset)
        produced = pathlib.Path(prefix + ".onnx")
        if not produced.exists():
            raise RuntimeError("paddle2onnx wrote no .onnx file")
        produced.replace(path)


def build_paddle(out_dir, names=None, opsets=None, force: bool = False, exports=PADDLE_EXPORTS) -> tuple[list, list]:
    """Build and export the paddle2onnx graphs missing from `out_dir`; returns (entries, failures).
    `exports`: (opset, raw) pairs; `opsets` keeps only those opsets."""
    os.environ.setdefault("GLOG_minloglevel", "2")
    out_dir = pathlib.Path(out_dir)
    (out_dir / "logs").mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    with _quiet_fds(out_dir / "logs" / "paddle_import.log"):
        import paddle
        import paddle2onnx
    import onnx
    versions = {"paddle": paddle.__version__, "paddle2onnx": paddle2onnx.__version__, "onnx": onnx.__version__}
    exports = [(op, raw) for op, raw in exports if not opsets or op in opsets]
    entries, failures = [], []
    for name, shape, low_high, notes in paddle_models():
        if names and name not in names:
            continue
        gnames = {(op, raw): f"paddle_{name}_op{op}" + ("_raw" if raw else "") for op, raw in exports}
        todo = [v for v in exports if force or not _cached(out_dir, gnames[v])]
        entries += [_cached(out_dir, gnames[v]) for v in exports if v not in todo]
        if not todo:
            continue
        rng = np.random.default_rng(SEED)
        calib = rng.uniform(*low_high, (CALIB_BATCH, *_concrete(shape))).astype("float32")
        x = rng.uniform(*low_high, (REF_BATCH, *_concrete(shape))).astype("float32")
        log = out_dir / "logs" / f"paddle_{name}.log"
        log.unlink(missing_ok=True)
        try:
            with _quiet_fds(log):
                model = _paddle_build(name)
                _paddle_randomize(model, calib, rng)
                model.eval()
                with paddle.no_grad():
                    y = model(paddle.to_tensor(x)).numpy().astype(np.float32)
        except Exception as e:
            failures += [{"name": gnames[v], "stage": "build", "error": f"{type(e).__name__}: {e}"[:2000],
                          "log_tail": _log_tail(log)} for v in todo]
            print(f"paddle_{name}: build FAILED {type(e).__name__}: {str(e)[:300]}", flush=True)
            continue
        for op, raw in todo:
            gname = gnames[op, raw]
            path = out_dir / f"{gname}.onnx"
            t0 = time.perf_counter()
            try:
                with _quiet_fds(log):
                    _paddle_export(paddle, paddle2onnx, model, shape, path, op, raw)
                dt = time.perf_counter() - t0
                how = ("jit.save + paddle2onnx.export(optimize_tool='None'), no constant folding" if raw
                       else "paddle.onnx.export (Polygraphy constant folding)")
                entries.append(_finish(out_dir, gname, name, "paddle", "paddle2onnx", versions, "NCHW", x, y,
                                       low_high, dt, f"{notes}; {how}"))
                print(f"{gname}: {dt:.1f} s, {path.stat().st_size / 1e6:.1f} MB, "
                      f"ort diff {entries[-1]['ort_max_abs_diff']:.2e} (|y| <= {entries[-1]['output_max_abs']:.2f})",
                      flush=True)
            except (Exception, SystemExit) as e:  # paddle2onnx calls sys.exit() when a conversion fails
                path.unlink(missing_ok=True)
                failures.append({"name": gname, "stage": "export", "error": f"{type(e).__name__}: {e}"[:2000],
                                 "log_tail": _log_tail(log), "traceback": traceback.format_exc()[-2000:]})
                print(f"{gname}: FAILED {type(e).__name__}: {str(e)[:300]}", flush=True)
    seconds = time.perf_counter() - t_all
    _write_index(out_dir, "paddle", [e for e in entries if e], failures, seconds, versions)
    print(f"paddle: {len(entries)} graphs, {len(failures)} failures, {seconds:.0f} s", flush=True)
    return entries, failures


# ------------------------------------------------------------------------------------------- CLI
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--framework", choices=("tf", "paddle"), required=True)
    ap.add_argument("--out", required=True, help="cache folder (outside the repo, or under models/cache/)")
    ap.add_argument("--only", nargs="*", help="model names to build (default: all)")
    ap.add_argument("--opsets", nargs="*", type=int, help="opsets (default: tf 13 17; paddle 11, 13 and 11 raw)")
    ap.add_argument("--force", action="store_true", help="rebuild graphs already in the index")
    a = ap.parse_args(argv)
    build = build_tf if a.framework == "tf" else build_paddle
    opsets = tuple(a.opsets) if a.opsets else (TF_OPSETS if a.framework == "tf" else None)
    _, failures = build(a.out, names=set(a.only) if a.only else None, opsets=opsets, force=a.force)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
