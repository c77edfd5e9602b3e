"""Hand-built graphs with the patterns real exporters write (paddle2onnx, tf2onnx, ultralytics, silero-vad)
and with control flow, for tests/test_exporter_patterns.py. Each builder returns an onnx.ModelProto with
input `x` ([N, 3, 8, 8] unless said otherwise) and output `y`."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 13


def _w(rng, *shape, scale=0.4) -> np.ndarray:
    return (scale * rng.standard_normal(shape)).astype(np.float32)


def const_node(name: str, value: np.ndarray) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], name=f"const_{name}", value=numpy_helper.from_array(value, name))


def model(nodes, inits=(), inputs=None, outputs=None, opset=OPSET, value_info=()) -> onnx.ModelProto:
    inputs = inputs or [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])]
    outputs = outputs or [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])]
    g = helper.make_graph(nodes, "g", inputs, outputs, [numpy_helper.from_array(v, k) for k, v in dict(inits).items()],
                          value_info=list(value_info))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], producer_name="onnxprune-tests")
    m.ir_version = 8
    return m


def head(src: str, c: int, rng, prefix="h") -> tuple[list, dict]:
    """GlobalAveragePool -> Flatten -> Gemm(10) -> `y`."""
    nodes = [helper.make_node("GlobalAveragePool", [src], [f"{prefix}_gap"], name=f"{prefix}_gap"),
             helper.make_node("Flatten", [f"{prefix}_gap"], [f"{prefix}_flat"], name=f"{prefix}_flatten"),
             helper.make_node("Gemm", [f"{prefix}_flat", f"{prefix}_fw", f"{prefix}_fb"], ["y"], name=f"{prefix}_fc",
                              transB=1)]
    return nodes, {f"{prefix}_fw": _w(rng, 10, c), f"{prefix}_fb": _w(rng, 10)}


def conv(name, src, w, out, rng, cin, cout, k=3, stride=1, bias=True, group=1):
    """Conv `name` reading `src` with a weight initializer `w` (and bias `w`_b)."""
    inits = {w: _w(rng, cout, cin // group, k, k, scale=1.0 / np.sqrt(cin // group * k * k))}
    ins = [src, w]
    if bias:
        inits[w + "_b"] = _w(rng, cout, scale=0.1)
        ins.append(w + "_b")
    node = helper.make_node("Conv", ins, [out], name=name, pads=[k // 2] * 4, strides=[stride] * 2, group=group)
    return node, inits


def paddle_raw_bias(seed=0) -> onnx.ModelProto:
    """paddle2onnx at opset 11 without its optimiser: weights are Constant nodes and each conv bias is
    Add(Conv, Reshape(Constant bias, Identity(Constant [1, -1, 1, 1])))."""
    rng = np.random.default_rng(seed)
    nodes = [const_node("shape4", np.array([1, -1, 1, 1], np.int64)),
             helper.make_node("Identity", ["shape4"], ["shape4_id"], name="shape_identity")]
    src, cin = "x", 3
    for i, cout in enumerate((8, 12)):
        nodes += [const_node(f"w{i}", _w(rng, cout, cin, 3, 3, scale=0.3)),
                  const_node(f"b{i}", _w(rng, cout, scale=0.2)),
                  helper.make_node("Conv", [src, f"w{i}"], [f"c{i}"], name=f"Conv.{i}", pads=[1, 1, 1, 1]),
                  helper.make_node("Reshape", [f"b{i}", "shape4_id"], [f"rb{i}"], name=f"Reshape.{i}"),
                  helper.make_node("Add", [f"c{i}", f"rb{i}"], [f"a{i}"], name=f"Add.{i}"),
                  helper.make_node("Relu", [f"a{i}"], [f"r{i}"], name=f"Relu.{i}")]
        src, cin = f"r{i}", cout
    h, inits = head(src, cin, rng)
    return model(nodes + h, inits, opset=11)


def shared_weight_slice(seed=0) -> onnx.ModelProto:
    """A 64x32x3x3 weight read whole by one Conv and through Slice(W, 0:16) by another; and a RandomNormal
    beside a foldable Reshape(Constant) (so constant folding runs)."""
    rng = np.random.default_rng(seed)
    inits = {"w": _w(rng, 64, 32, 3, 3, scale=0.05), "st": np.array([0], np.int64), "en": np.array([16], np.int64),
             "ax": np.array([0], np.int64), "w0": _w(rng, 32, 3, 1, 1), "shp": np.array([1, -1, 1, 1], np.int64),
             "b": _w(rng, 16)}
    nodes = [helper.make_node("Conv", ["x", "w0"], ["c0"], name="stem"),
             helper.make_node("Conv", ["c0", "w"], ["c1"], name="whole", pads=[1, 1, 1, 1]),
             helper.make_node("Slice", ["w", "st", "en", "ax"], ["ws"], name="slice_w"),
             helper.make_node("Conv", ["c0", "ws"], ["c2"], name="part", pads=[1, 1, 1, 1]),
             helper.make_node("Reshape", ["b", "shp"], ["rb"], name="bias_reshape"),
             helper.make_node("Add", ["c2", "rb"], ["c3"], name="bias_add"),
             helper.make_node("RandomNormal", [], ["noise"], name="noise", shape=[1, 16, 8, 8], seed=1.0),
             helper.make_node("Mul", ["noise", "c3"], ["c4"], name="noisy"),
             helper.make_node("ReduceMean", ["c1"], ["m1"], name="m1", axes=[1], keepdims=1),
             helper.make_node("Add", ["c4", "m1"], ["y"], name="out")]
    return model(nodes, inits, outputs=[helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16, 8, 8])])


def keras_flatten(seed=0) -> onnx.ModelProto:
    """tf2onnx's Keras 3 Flatten on NHWC: Reshape(t, Cast(Concat(Slice(Shape(t), 0:1), [H*W*C])))."""
    rng = np.random.default_rng(seed)
    n1, i1 = conv("conv1", "x", "w1", "c1", rng, 3, 8, stride=2)
    n2, i2 = conv("conv2", "r1", "w2", "c2", rng, 8, 6, stride=2)
    inits = {**i1, **i2, "s0": np.array([0], np.int64), "s1": np.array([1], np.int64),
             "hwc": np.array([2 * 2 * 6], np.int32), "fw": _w(rng, 24, 10), "fb": _w(rng, 10)}
    nodes = [n1, helper.make_node("Relu", ["c1"], ["r1"], name="relu1"), n2,
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("Transpose", ["r2"], ["t"], name="to_nhwc", perm=[0, 2, 3, 1]),
             helper.make_node("Shape", ["t"], ["ts"], name="flatten/Shape"),
             helper.make_node("Cast", ["ts"], ["ts32"], name="flatten/Cast", to=TensorProto.INT32),
             helper.make_node("Slice", ["ts32", "s0", "s1", "s0"], ["batch"], name="flatten/strided_slice"),
             helper.make_node("Concat", ["batch", "hwc"], ["target32"], name="flatten/Concat", axis=0),
             helper.make_node("Cast", ["target32"], ["target"], name="flatten/Cast_1", to=TensorProto.INT64),
             helper.make_node("Reshape", ["t", "target"], ["flat"], name="flatten/Reshape"),
             helper.make_node("MatMul", ["flat", "fw"], ["mm"], name="dense/MatMul"),
             helper.make_node("Add", ["mm", "fb"], ["y"], name="dense/BiasAdd")]
    return model(nodes, inits)


def upsample_by_size(seed=0) -> onnx.ModelProto:
    """paddle2onnx's F.interpolate(size=like.shape[2:]): Resize(x, sizes=Concat(Slice(Shape(x), 0:2), [H, W]))
    of a stride-2 branch, added to the full-size one (a DB-style FPN neck)."""
    rng = np.random.default_rng(seed)
    n1, i1 = conv("conv1", "x", "w1", "c1", rng, 3, 8)
    n2, i2 = conv("conv2", "c1", "w2", "c2", rng, 8, 6, stride=2)
    n3, i3 = conv("conv3", "c1", "w3", "c3", rng, 8, 6)
    h, ih = head("s", 6, rng)
    inits = {**i1, **i2, **i3, **ih, "s0": np.array([0], np.int64), "s2": np.array([2], np.int64),
             "hw": np.array([8, 8], np.int64), "roi": np.zeros(0, np.float32), "scales": np.zeros(0, np.float32)}
    nodes = [n1, n2, n3,
             helper.make_node("Shape", ["c2"], ["sh"], name="Shape.0"),
             helper.make_node("Slice", ["sh", "s0", "s2", "s0"], ["nc"], name="Slice.0"),
             helper.make_node("Concat", ["nc", "hw"], ["sizes"], name="Concat.0", axis=0),
             helper.make_node("Resize", ["c2", "roi", "scales", "sizes"], ["up"], name="Resize.0", mode="nearest"),
             helper.make_node("Add", ["c3", "up"], ["s"], name="Add.0")] + h
    return model(nodes, inits)


def shape_to_constant_of_shape(channel: bool, seed=0) -> onnx.ModelProto:
    """Shape(feature) -> Gather -> ConstantOfShape (a YOLO head's strides from the feature map's shape),
    added to the output. With `channel`, the gathered dimension is the channel count (it must freeze), else
    the batch and H."""
    rng = np.random.default_rng(seed)
    n1, i1 = conv("conv1", "x", "w1", "c1", rng, 3, 8)
    n2, i2 = conv("conv2", "c1", "w2", "c2", rng, 8, 6)
    h, ih = head("c2", 6, rng, prefix="h")
    idx = np.array([0, 1], np.int64) if channel else np.array([0, 2], np.int64)
    inits = {**i1, **i2, **ih, "idx": idx}
    nodes = [n1, n2, helper.make_node("Shape", ["c1"], ["sh"], name="Shape"),
             helper.make_node("Gather", ["sh", "idx"], ["dims"], name="Gather", axis=0),
             helper.make_node("ConstantOfShape", ["dims"], ["full"], name="ConstantOfShape",
                              value=numpy_helper.from_array(np.array([0.5], np.float32))),
             helper.make_node("ReduceMean", ["full"], ["total"], name="ReduceMean", axes=[1], keepdims=1)]
    for n in h:
        if n.op_type == "Gemm":
            n.output[0] = "logits"
    nodes += h + [helper.make_node("Add", ["logits", "total"], ["y"], name="plus")]
    return model(nodes, inits)


def depth_to_space(mode: str, seed=0) -> onnx.ModelProto:
    """Conv(3 -> 4·2²) -> DepthToSpace(2, `mode`) -> Conv(4 -> 6) -> SpaceToDepth(2) -> Conv(24 -> 8) -> head."""
    rng = np.random.default_rng(seed)
    n1, i1 = conv("conv1", "x", "w1", "c1", rng, 3, 16)
    n2, i2 = conv("conv2", "d2s", "w2", "c2", rng, 4, 6)
    n3, i3 = conv("conv3", "s2d", "w3", "c3", rng, 24, 8, k=1)
    h, ih = head("c3", 8, rng)
    nodes = [n1, helper.make_node("DepthToSpace", ["c1"], ["d2s"], name="DepthToSpace", blocksize=2, mode=mode), n2,
             helper.make_node("SpaceToDepth", ["c2"], ["s2d"], name="SpaceToDepth", blocksize=2), n3] + h
    return model(nodes, {**i1, **i2, **i3, **ih})


def single_class_shuffle(seed=0) -> onnx.ModelProto:
    """A one-channel Conv concatenated four times (one channel class on four positions), channel-shuffled
    (Reshape to (2, 2), Transpose, Reshape back), then a Conv: what ShuffleNet's passed-through halves become
    after many shuffles."""
    rng = np.random.default_rng(seed)
    n0, i0 = conv("conv0", "x", "w0", "c0", rng, 3, 8)
    n1, i1 = conv("conv1", "c0", "w1", "c1", rng, 8, 1)
    n2, i2 = conv("conv2", "sh", "w2", "c2", rng, 4, 6)
    h, ih = head("c2", 6, rng)
    inits = {**i0, **i1, **i2, **ih, "s5": np.array([0, 2, 2, 8, 8], np.int64), "s4": np.array([0, 4, 8, 8], np.int64)}
    nodes = [n0, n1, helper.make_node("Concat", ["c1", "c1", "c1", "c1"], ["cat"], name="cat", axis=1),
             helper.make_node("Reshape", ["cat", "s5"], ["r5"], name="shuffle/Reshape"),
             helper.make_node("Transpose", ["r5"], ["t5"], name="shuffle/Transpose", perm=[0, 2, 1, 3, 4]),
             helper.make_node("Reshape", ["t5", "s4"], ["sh"], name="shuffle/Reshape_1"), n2] + h
    return model(nodes, inits)


# ------------------------------------------------------------------------------------------ control flow
def _branch(name: str, nodes, outputs, shape) -> onnx.GraphProto:
    return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(o, TensorProto.FLOAT, shape)
                                               for o in outputs])


def if_reads_main(seed=0) -> onnx.ModelProto:
    """A main network (conv1 -> conv2 -> head -> `y`), and an If on input `c` whose branches both read conv2's
    output and a main-graph weight `w_side` (a Conv in each branch) -> output `side`."""
    rng = np.random.default_rng(seed)
    n1, i1 = conv("conv1", "x", "w1", "c1", rng, 3, 8)
    n2, i2 = conv("conv2", "r1", "w2", "c2", rng, 8, 6)
    h, ih = head("r2", 6, rng)
    inits = {**i1, **i2, **ih, "w_side": _w(rng, 4, 6, 3, 3, scale=0.2)}
    then = _branch("then", [helper.make_node("Conv", ["r2", "w_side"], ["t_out"], name="then_conv", pads=[1] * 4)],
                   ["t_out"], ["N", 4, 8, 8])
    other = _branch("else", [helper.make_node("Conv", ["r2", "w_side"], ["e_c"], name="else_conv", pads=[1] * 4),
                             helper.make_node("Neg", ["e_c"], ["e_out"], name="else_neg")], ["e_out"],
                    ["N", 4, 8, 8])
    nodes = [n1, helper.make_node("Relu", ["c1"], ["r1"], name="relu1"), n2,
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2")] + h + \
            [helper.make_node("If", ["c"], ["side"], name="side_if", then_branch=then, else_branch=other)]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8]),
              helper.make_tensor_value_info("c", TensorProto.BOOL, [])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10]),
               helper.make_tensor_value_info("side", TensorProto.FLOAT, ["N", 4, 8, 8])]
    return model(nodes, inits, inputs, outputs)


def network_in_if(seed=0) -> onnx.ModelProto:
    """silero-vad's layout: the whole network sits in the branches of an If on input `c` (Constant-node
    weights inside each branch)."""
    rng = np.random.default_rng(seed)

    def net(tag):
        return _branch(tag, [const_node(f"{tag}_w", _w(rng, 4, 3, 3, 3)),
                             helper.make_node("Conv", ["x", f"{tag}_w"], [f"{tag}_c"], name=f"{tag}_conv",
                                              pads=[1] * 4),
                             helper.make_node("Relu", [f"{tag}_c"], [f"{tag}_r"], name=f"{tag}_relu"),
                             helper.make_node("GlobalAveragePool", [f"{tag}_r"], [f"{tag}_y"], name=f"{tag}_gap")],
                       [f"{tag}_y"], ["N", 4, 1, 1])
    nodes = [helper.make_node("If", ["c"], ["y"], name="rate_if", then_branch=net("a"), else_branch=net("b"))]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8]),
              helper.make_tensor_value_info("c", TensorProto.BOOL, [])]
    return model(nodes, {}, inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 1, 1])])


def nested_ifs(depth: int, condition: str, seed=0) -> onnx.ModelProto:
    """conv1 -> `depth` Ifs nested in their then-branches, each applying Relu to its parent's value -> `y`.
    `condition`: 'constant' (a Constant node) or 'shape' (Equal(Shape(x)[0], 1) with a static batch of 1,
    which ONNX Runtime's symbolic shape inference evaluates)."""
    rng = np.random.default_rng(seed)
    shape = [1, 4, 8, 8]

    def level(d, src):
        nodes = [helper.make_node("Relu", [src], [f"r{d}"], name=f"relu{d}")]
        if d == 0:
            return helper.make_graph(nodes, f"leaf{d}", [], [helper.make_tensor_value_info(f"r{d}", TensorProto.FLOAT,
                                                                                            shape)])
        other = helper.make_graph([helper.make_node("Identity", [f"r{d}"], [f"e{d}"], name=f"id{d}")], f"else{d}", [],
                                  [helper.make_tensor_value_info(f"e{d}", TensorProto.FLOAT, shape)])
        nodes.append(helper.make_node("If", ["cond"], [f"o{d}"], name=f"if{d}", then_branch=level(d - 1, f"r{d}"),
                                      else_branch=other))
        return helper.make_graph(nodes, f"level{d}", [], [helper.make_tensor_value_info(f"o{d}", TensorProto.FLOAT,
                                                                                         shape)])
    inits = {"w1": _w(rng, 4, 3, 3, 3), "i0": np.array(0, np.int64), "one": np.array(1, np.int64)}
    if condition == "constant":
        cond = [const_node("cond", np.array(True))]
    else:
        cond = [helper.make_node("Shape", ["x"], ["xs"], name="xshape"),
                helper.make_node("Gather", ["xs", "i0"], ["b0"], name="batch", axis=0),
                helper.make_node("Equal", ["b0", "one"], ["cond"], name="is_one")]
    nodes = cond + [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1] * 4),
                    helper.make_node("If", ["cond"], ["y"], name="top", then_branch=level(depth - 1, "c1"),
                                     else_branch=_branch("top_else", [helper.make_node("Identity", ["c1"], ["z"],
                                                                                       name="top_id")], ["z"], shape))]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])]
    return model(nodes, inits, inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)])
