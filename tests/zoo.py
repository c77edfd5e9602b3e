"""Test zoo: tiny torch models, one per graph structure a channel pruner must
understand, exported to ONNX by several exporters and cached on disk.

    zoo_models()                 -> [(name, factory)]
    build_zoo(cache_dir, ...)    -> [ZooModel]   (exports only what is missing)
    random_input(zm, batch, seed)-> {input_name: np.ndarray}
    custom_op_graph(path)        -> graph with a custom-domain op (not runnable)

Exports that fail are not fatal: the reason is written to ``<stem>.failed`` in
the cache and recorded in ``EXPORT_FAILURES[(name, exporter)]``.
"""
from __future__ import annotations

import dataclasses
import pathlib
import time
from collections.abc import Callable

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from models import exporters
from models.exporters import export_cached

SEED = 0
EXPORTERS = ("ts13", "ts17", "dynamo18")
EXPORT_BATCH = 2  # example batch for export; torch.export specializes dims of size 1
EXPORT_FAILURES: dict[tuple[str, str], str] = {}
EXPORT_TIMES: dict[tuple[str, str], float] = {}


@dataclasses.dataclass
class ZooModel:
    name: str
    exporter: str
    path: pathlib.Path
    input_name: str
    input_shape: tuple
    torch_module: nn.Module
    output_names: tuple = ("output",)


# --------------------------------------------------------------------------- blocks
def _randomize_bn(model: nn.Module, gen: torch.Generator) -> nn.Module:
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(0.2 * torch.randn(n, generator=gen))
            m.running_var.copy_(0.5 + torch.rand(n, generator=gen))
            m.weight.data.copy_(0.5 + torch.rand(n, generator=gen))
            m.bias.data.copy_(0.2 * torch.randn(n, generator=gen))
    return model


def cbr(cin, cout, k=3, s=1, groups=1, act=nn.ReLU):
    layers = [nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


class Head(nn.Module):
    """GAP -> flatten -> Linear."""

    def __init__(self, cin, ncls=10):
        super().__init__()
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(cin, ncls)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(x), 1))


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, s=1):
        super().__init__()
        self.c1, self.c2 = cbr(cin, cout, 3, s), cbr(cout, cout, 3, 1, act=None)
        self.down = cbr(cin, cout, 1, s, act=None) if (s != 1 or cin != cout) else None

    def forward(self, x):
        idt = x if self.down is None else self.down(x)
        return torch.relu(self.c2(self.c1(x)) + idt)


class Bottleneck(nn.Module):
    def __init__(self, cin, mid, cout, s=1):
        super().__init__()
        self.body = nn.Sequential(cbr(cin, mid, 1), cbr(mid, mid, 3, s), cbr(mid, cout, 1, act=None))
        self.down = cbr(cin, cout, 1, s, act=None) if (s != 1 or cin != cout) else None

    def forward(self, x):
        idt = x if self.down is None else self.down(x)
        return torch.relu(self.body(x) + idt)


class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, expand, s=1):
        super().__init__()
        hid = cin * expand
        self.res = s == 1 and cin == cout
        self.body = nn.Sequential(cbr(cin, hid, 1, act=nn.ReLU6), cbr(hid, hid, 3, s, groups=hid, act=nn.ReLU6),
                                  cbr(hid, cout, 1, act=None))

    def forward(self, x):
        y = self.body(x)
        return x + y if self.res else y


class SE(nn.Module):
    def __init__(self, c, sq):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1, self.fc2 = nn.Conv2d(c, sq, 1), nn.Conv2d(sq, c, 1)
        self.relu, self.gate = nn.ReLU(), nn.Hardsigmoid()

    def forward(self, x):
        return x * self.gate(self.fc2(self.relu(self.fc1(self.pool(x)))))


class MBv3Block(nn.Module):
    def __init__(self, cin, hid, cout, s=1):
        super().__init__()
        self.res = s == 1 and cin == cout
        self.body = nn.Sequential(cbr(cin, hid, 1, act=nn.Hardswish), cbr(hid, hid, 3, s, groups=hid, act=nn.Hardswish),
                                  SE(hid, 4), cbr(hid, cout, 1, act=None))

    def forward(self, x):
        y = self.body(x)
        return x + y if self.res else y


class ConcatNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = cbr(3, 8)
        self.b1 = cbr(8, 4, 1)
        self.b2 = nn.Sequential(cbr(8, 4, 1), cbr(4, 6, 3))
        self.b3 = nn.Sequential(nn.MaxPool2d(3, 1, 1), cbr(8, 4, 1))
        self.fuse = cbr(14, 12, 1)
        self.dense = cbr(12, 6, 3)  # DenseNet-style: cat([x, f(x)])
        self.head = Head(18)

    def forward(self, x):
        x = self.stem(x)
        x = self.fuse(torch.cat([self.b1(x), self.b2(x), self.b3(x)], 1))
        return self.head(torch.cat([x, self.dense(x)], 1))


def channel_shuffle(x, groups: int):
    b, c, h, w = x.size()
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).contiguous().view(b, c, h, w)


class ShuffleUnit(nn.Module):
    def __init__(self, cin, cout, s):
        super().__init__()
        self.s, half = s, cout // 2
        if s > 1:
            self.branch1 = nn.Sequential(cbr(cin, cin, 3, s, groups=cin, act=None), cbr(cin, half, 1))
        bin_ = cin if s > 1 else half
        self.branch2 = nn.Sequential(cbr(bin_, half, 1), cbr(half, half, 3, s, groups=half, act=None),
                                     cbr(half, half, 1))

    def forward(self, x):
        if self.s == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat([x1, self.branch2(x2)], 1)
        else:
            out = torch.cat([self.branch1(x), self.branch2(x)], 1)
        return channel_shuffle(out, 2)


class SplitNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = cbr(3, 12)
        self.pa, self.pb = cbr(4, 8), cbr(6, 8)
        self.fuse = cbr(10, 16, 1)
        self.head = Head(16)

    def forward(self, x):
        a, b, c = torch.split(self.stem(x), [4, 6, 2], dim=1)
        return self.head(self.fuse(torch.cat([self.pa(a) + self.pb(b), c], 1)))


class ResNeXtBlock(nn.Module):
    def __init__(self, cin, cout, groups):
        super().__init__()
        self.body = nn.Sequential(cbr(cin, cout, 1), cbr(cout, cout, 3, groups=groups), cbr(cout, cout, 1, act=None))
        self.down = cbr(cin, cout, 1, act=None)

    def forward(self, x):
        return torch.relu(self.body(x) + self.down(x))


class FlattenMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(cbr(3, 8, 3, 2), cbr(8, 8, 3, 2))  # -> 8x4x4
        self.fc1, self.fc2 = nn.Linear(128, 24), nn.Linear(24, 10)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(torch.flatten(self.features(x), 1))))


class NHWCNet(nn.Module):
    """TF-style layout: Transposes around every conv, per-channel work in NHWC."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2 = cbr(3, 8, act=None), cbr(8, 12, 3, 2)
        self.bias = nn.Parameter(0.1 * torch.randn(8))  # per-channel Add broadcast on the last (C) axis
        self.fc = nn.Linear(12, 10)

    def forward(self, x):  # x: [N, H, W, C]
        x = self.c1(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)  # back to NHWC in the middle
        x = torch.relu(x + self.bias)  # keeps the two middle Transposes from cancelling out
        x = self.c2(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return self.fc(x).mean(dim=(1, 2))  # Linear over channel axis of NHWC, then mean-pool


class InnerOutputNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.b1, self.b2, self.b3 = cbr(3, 8), cbr(8, 16, 3, 2), cbr(16, 16)
        self.head = Head(16)

    def forward(self, x):
        feat = self.b2(self.b1(x))
        return self.head(self.b3(feat)), feat


class ViewFlattenNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(cbr(3, 8, 3, 2), cbr(8, 12, 3, 2))  # -> 12x4x4
        self.fc = nn.Linear(192, 10)

    def forward(self, x):
        x = self.features(x)
        return self.fc(x.view(x.size(0), -1))


class GroupedConcatNet(nn.Module):
    """A grouped Conv (groups=4) on the concatenation of two branches, and a grouped Conv (groups=2) on one
    Split piece of a tensor whose other piece goes elsewhere."""

    def __init__(self):
        super().__init__()
        self.stem, self.a, self.b = cbr(3, 8), cbr(8, 8, 1), cbr(8, 8, 3)
        self.g, self.c = cbr(16, 16, 3, groups=4), cbr(16, 16, 1)
        self.g2, self.fuse, self.head = cbr(8, 8, 3, groups=2), cbr(16, 16, 1), Head(16)

    def forward(self, x):
        x = self.stem(x)
        p, q = torch.split(self.c(self.g(torch.cat([self.a(x), self.b(x)], 1))), [8, 8], 1)
        return self.head(self.fuse(torch.cat([self.g2(p), q], 1)))


class PixelShuffleNet(nn.Module):
    """Super-resolution style: a conv to C·s² channels, PixelShuffle (DepthToSpace, CRD mode), a conv on the
    upscaled map, PixelUnshuffle (Reshape/Transpose/Reshape) back down, a head."""

    def __init__(self):
        super().__init__()
        self.stem, self.up = cbr(3, 8), cbr(8, 16)  # 16 = 4 channels x 2²
        self.shuffle, self.mid = nn.PixelShuffle(2), cbr(4, 6)
        self.unshuffle, self.post, self.head = nn.PixelUnshuffle(2), cbr(24, 16, 1), Head(16)

    def forward(self, x):
        return self.head(self.post(self.unshuffle(self.mid(self.shuffle(self.up(self.stem(x)))))))


class YoloHead(nn.Module):
    """YOLOv8's Detect head as ultralytics exports it: per level a box branch (4·reg_max channels) and a class
    branch, concatenated and flattened with view(b, no, -1); anchors and strides built from the feature maps'
    shapes (torch.arange, torch.full: Shape -> Range / ConstantOfShape); box/cls split; DFL (softmax over
    reg_max and a fixed conv); boxes decoded around the anchors."""

    def __init__(self, nc=3, reg_max=4):
        super().__init__()
        self.nc, self.reg_max, self.no, self.strides = nc, reg_max, nc + 4 * reg_max, (4, 8)
        self.stem, self.p3, self.p4 = cbr(3, 8, 3, 2), cbr(8, 12, 3, 2), cbr(12, 16, 3, 2)
        self.box = nn.ModuleList(nn.Sequential(cbr(c, 8), nn.Conv2d(8, 4 * reg_max, 1)) for c in (12, 16))
        self.cls = nn.ModuleList(nn.Sequential(cbr(c, 8), nn.Conv2d(8, nc, 1)) for c in (12, 16))
        self.dfl = nn.Conv2d(reg_max, 1, 1, bias=False).requires_grad_(False)

    def forward(self, x):
        f3 = self.p3(self.stem(x))
        levels = (f3, self.p4(f3))
        b = f3.shape[0]
        anchors, strides = [], []
        for f, s in zip(levels, self.strides):  # make_anchors: from the feature maps' shapes (the batch is the
            h, w = f.shape[2], f.shape[3]       # dynamic one here, H and W in a dynamic-shape export)
            sx, sy = torch.arange(w, dtype=f.dtype) + 0.5, torch.arange(h, dtype=f.dtype) + 0.5
            sy, sx = torch.meshgrid(sy, sx, indexing="ij")
            anchors.append(torch.stack((sx, sy), -1).view(-1, 2))
            strides.append(torch.full((f.shape[0], 1, h * w), float(s), dtype=f.dtype))
        anchor, stride = torch.cat(anchors).transpose(0, 1), torch.cat(strides, 2)
        feats = [torch.cat([self.box[i](f), self.cls[i](f)], 1) for i, f in enumerate(levels)]
        box, cls = torch.cat([f.view(b, self.no, -1) for f in feats], 2).split((4 * self.reg_max, self.nc), 1)
        a = box.shape[2]
        dist = self.dfl(box.view(b, 4, self.reg_max, a).transpose(2, 1).softmax(1)).view(b, 4, a)
        lt, rb = dist.chunk(2, 1)
        x1y1, x2y2 = anchor.unsqueeze(0) - lt, anchor.unsqueeze(0) + rb
        return torch.cat(((x1y1 + x2y2) / 2 * stride, (x2y2 - x1y1) * stride, cls.sigmoid()), 1)


# --------------------------------------------------------------------------- table
_CHW = (1, 3, 16, 16)
_SPECS: dict[str, tuple[Callable[[], nn.Module], tuple, tuple]] = {
    # name: (builder, input_shape (batch 1), output_names)
    "chain": (lambda: nn.Sequential(cbr(3, 8), cbr(8, 16, 3, 2), cbr(16, 16), Head(16)), _CHW, ("output",)),
    "basic_res": (lambda: nn.Sequential(cbr(3, 8), BasicBlock(8, 8), BasicBlock(8, 16, 2), BasicBlock(16, 16),
                                        Head(16)), _CHW, ("output",)),
    "bottleneck": (lambda: nn.Sequential(cbr(3, 16), Bottleneck(16, 4, 16), Bottleneck(16, 8, 24, 2), Head(24)),
                   _CHW, ("output",)),
    "inverted_res": (lambda: nn.Sequential(cbr(3, 8, act=nn.ReLU6), InvertedResidual(8, 8, 3),
                                           InvertedResidual(8, 12, 2, 2), InvertedResidual(12, 12, 2),
                                           cbr(12, 16, 1, act=nn.ReLU6), Head(16)),
                     _CHW, ("output",)),
    "mbv3_se": (lambda: nn.Sequential(cbr(3, 8, act=nn.Hardswish), MBv3Block(8, 16, 8), MBv3Block(8, 16, 12, 2),
                                      cbr(12, 16, 1, act=nn.Hardswish), Head(16)), _CHW, ("output",)),
    "concat": (ConcatNet, _CHW, ("output",)),
    "shuffle": (lambda: nn.Sequential(cbr(3, 8), ShuffleUnit(8, 16, 2), ShuffleUnit(16, 16, 1), cbr(16, 24, 1),
                                      Head(24)), _CHW, ("output",)),
    "split": (SplitNet, _CHW, ("output",)),
    "grouped": (lambda: nn.Sequential(cbr(3, 8), ResNeXtBlock(8, 16, 4), cbr(16, 24, 3, groups=2),
                                      cbr(24, 24, 3, groups=24), cbr(24, 16, 1), Head(16)), _CHW, ("output",)),
    "flatten_linear": (FlattenMLP, _CHW, ("output",)),
    "nhwc": (NHWCNet, (1, 16, 16, 3), ("output",)),
    "inner_output": (InnerOutputNet, _CHW, ("output", "feat")),
    "view_flatten": (ViewFlattenNet, _CHW, ("output",)),
    "grouped_concat": (GroupedConcatNet, _CHW, ("output",)),
    "pixel_shuffle": (PixelShuffleNet, _CHW, ("output",)),
    "yolo_head": (YoloHead, (1, 3, 32, 32), ("output",)),
}


def _make(name: str) -> nn.Module:
    builder = _SPECS[name][0]
    torch.manual_seed(SEED)
    model = builder()
    for m in model.modules():  # keep activation scale through depth (torch's default init shrinks it)
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    gen = torch.Generator().manual_seed(SEED + 1)
    with torch.no_grad():
        _randomize_bn(model, gen)
    return model.eval()


def zoo_models() -> list[tuple[str, Callable[[], nn.Module]]]:
    return [(n, (lambda n=n: _make(n))) for n in _SPECS]


# --------------------------------------------------------------------------- export
def default_cache_dir() -> pathlib.Path:
    """`models/cache/test-zoo-<key>`: exports are reused by later runs until the zoo, the exporters or the
    versions change (older keys are removed when a new one is made)."""
    return exporters.keyed_cache_dir("test-zoo", (pathlib.Path(__file__),))


def build_zoo(cache_dir, exporters=EXPORTERS, names=None) -> list[ZooModel]:
    cache_dir = pathlib.Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    result = []
    for name in (names or list(_SPECS)):
        _, shape, outs = _SPECS[name]
        model = _make(name)
        for exp in exporters:
            path = cache_dir / f"{name}_{exp}.onnx"
            x = torch.randn((EXPORT_BATCH, *shape[1:]), generator=torch.Generator().manual_seed(SEED))
            t0 = time.perf_counter()
            failure = export_cached(lambda model=model: model, exp, x, path, outs)
            EXPORT_TIMES.setdefault((name, exp), time.perf_counter() - t0)
            if failure is not None:
                EXPORT_FAILURES[(name, exp)] = failure
                continue
            result.append(ZooModel(name, exp, path, "input", shape, model, outs))
    return result


def random_input(zm: ZooModel, batch: int, seed: int) -> dict[str, np.ndarray]:
    """Gaussian noise with a random per-sample scale and offset: pure white noise is
    averaged away by global pooling, leaving outputs nearly input-independent."""
    rng = np.random.default_rng(seed)
    shape, bshape = (batch, *zm.input_shape[1:]), (batch,) + (1,) * (len(zm.input_shape) - 1)
    x = rng.standard_normal(shape) * rng.uniform(0.5, 2.0, bshape) + rng.standard_normal(bshape)
    return {zm.input_name: x.astype(np.float32)}


# --------------------------------------------------------------------------- custom op
def custom_op_graph(path) -> pathlib.Path:
    """[N,3,8,8] -> Conv(8) -> Relu -> com.example::MysteryOp -> Conv(8) -> Relu -> Conv(6)
    -> GlobalAveragePool -> Flatten -> Gemm(10). Not runnable by ORT (unknown op)."""
    path = pathlib.Path(path)
    rng = np.random.default_rng(SEED)

    def init(name, *shape):
        return numpy_helper.from_array((0.3 * rng.standard_normal(shape)).astype(np.float32), name)

    inits = [init("c1.w", 8, 3, 3, 3), init("c1.b", 8), init("c2.w", 8, 8, 3, 3), init("c2.b", 8),
             init("c3.w", 6, 8, 1, 1), init("c3.b", 6), init("fc.w", 10, 6), init("fc.b", 10)]
    conv = dict(pads=[1, 1, 1, 1], kernel_shape=[3, 3])
    nodes = [
        helper.make_node("Conv", ["input", "c1.w", "c1.b"], ["c1"], name="conv1", **conv),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("MysteryOp", ["r1"], ["m"], name="mystery", domain="com.example", alpha=0.5),
        helper.make_node("Conv", ["m", "c2.w", "c2.b"], ["c2"], name="conv2", **conv),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Conv", ["r2", "c3.w", "c3.b"], ["c3"], name="conv3", kernel_shape=[1, 1]),
        helper.make_node("GlobalAveragePool", ["c3"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten", axis=1),
        helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["output"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "custom_op_graph",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 10])],
        inits,
        # shape inference cannot see through the custom op: declare its output
        value_info=[helper.make_tensor_value_info("m", TensorProto.FLOAT, ["N", 8, 8, 8])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)],
                              producer_name="onnxprune-tests")
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def twin_unknown_op_model(tmp_path, tail: str = "shrink"):
    """Conv -> Relu -> Conv -> a last node that ONNX Runtime runs and the torch twin does not: Shrink (an op it
    does not know: refused when the twin is built) or Resize with antialias (refused when it runs)."""
    from onnx import TensorProto as T
    from onnx import helper as h
    from onnx import numpy_helper as nh
    rng = np.random.default_rng(0)
    w1 = nh.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w1")
    w2 = nh.from_array(rng.standard_normal((4, 8, 3, 3)).astype(np.float32), "w2")
    inits, out_hw = [w1, w2], 8
    nodes = [h.make_node("Conv", ["x", "w1"], ["a"], pads=[1] * 4, name="c1"), h.make_node("Relu", ["a"], ["b"]),
             h.make_node("Conv", ["b", "w2"], ["c"], pads=[1] * 4, name="c2")]
    if tail == "shrink":
        nodes.append(h.make_node("Shrink", ["c"], ["y"], lambd=0.1, name="shrink"))
    else:
        inits.append(nh.from_array(np.array([1, 1, 0.5, 0.5], np.float32), "scales"))
        nodes.append(h.make_node("Resize", ["c", "", "scales"], ["y"], mode="linear", antialias=1, name="resize"))
        out_hw = 4
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, [None, 3, 8, 8])],
                     [h.make_tensor_value_info("y", T.FLOAT, [None, 4, out_hw, out_hw])], inits)
    path = tmp_path / f"{tail}.onnx"
    onnx.save(h.make_model(g, opset_imports=[h.make_opsetid("", 18)]), path)
    return path, {"x": rng.standard_normal((48, 3, 8, 8)).astype(np.float32)}


def leak_twin_relu(monkeypatch) -> None:
    """Make the torch twin's Relu leak (slope 0.1) for one test: a twin that disagrees with ONNX Runtime."""
    from onnxprune.twin import ops
    monkeypatch.setitem(ops._REGISTRY, ("", "Relu"), lambda s, ins: torch.nn.functional.leaky_relu(ins[0], 0.1))
