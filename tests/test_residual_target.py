"""Residual targets (docs/DESIGN.md, "Residual targets"): a consumer whose output is added to a residual stream
imitates the original sum, so its re-fit also corrects the error the groups pruned before left in the stream."""
import json

import numpy as np
import onnx
import patterns as P
import pytest
from onnx import TensorProto, helper

from onnxprune import apply_selection, prune
from onnxprune.analysis import Analysis
from onnxprune.calibration import load_calibration
from onnxprune.calibration.taps import Tap
from onnxprune.options import CalibrationOptions
from onnxprune.selection import Selection
from onnxprune.statistics import consumers_of
from onnxprune.statistics.collector import Collector
from onnxprune.statistics.output_cache import OutputCache

AFFINE = ("", "bn", "muladd")   # what lies between Conv c and the residual Add


def residual_block(head: bool, seed=0, b_reads: str = "r", between: str = "") -> onnx.ModelProto:
    """x -> Conv p (16) -> Relu -> Conv a (8) = r; r -> Conv b (16) -> Relu -> Conv c (8); y = r + c, the graph
    output (`head` False: the stream is frozen) or read by a pooled Gemm head (the stream is a group).
    `b_reads` "x": Conv b is a copy of Conv p reading x, so Conv c sees every channel Relu(p) has.
    `between`: "bn", an inference BatchNormalization after Conv c; "muladd", Mul and Add of per-channel
    constants (as tf2onnx writes a BatchNormalization)."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], {}
    b = ("b", "r", "b", 8, 16, 1) if b_reads == "r" else ("b", "x", "b", 3, 16, 3)
    for name, src, out, cin, cout, k in (("p", "x", "p", 3, 16, 3), ("a", "pr", "r", 16, 8, 1), b,
                                         ("c", "br", "c", 16, 8, 1)):
        node, w = P.conv(name, src, name + "_w", out, rng, cin, cout, k)
        if name == "b" and b_reads == "x":
            w = {"b_w": inits["p_w"].copy(), "b_w_b": inits["p_w_b"].copy()}
        nodes.append(node)
        inits.update(w)
        if name in ("p", "b"):
            nodes.append(helper.make_node("Relu", [out], [out + "r"], name=out + "_relu"))
    add = "y" if not head else "s"
    last = "c"
    if between == "bn":
        inits.update(bn_s=rng.uniform(0.5, 2.0, 8).astype(np.float32), bn_b=rng.normal(0, 0.3, 8).astype(np.float32),
                     bn_m=rng.normal(0, 0.3, 8).astype(np.float32), bn_v=rng.uniform(0.3, 3.0, 8).astype(np.float32))
        nodes.append(helper.make_node("BatchNormalization", ["c", "bn_s", "bn_b", "bn_m", "bn_v"], ["cn"], name="bn"))
        last = "cn"
    elif between == "muladd":
        inits.update(mul_k=rng.uniform(-2.0, 2.0, (1, 8, 1, 1)).astype(np.float32),
                     add_k=rng.normal(0, 0.3, (8, 1, 1)).astype(np.float32))
        nodes += [helper.make_node("Mul", ["mul_k", "c"], ["cm"], name="mul"),
                  helper.make_node("Add", ["cm", "add_k"], ["cn"], name="add_k")]
        last = "cn"
    nodes.append(helper.make_node("Add", ["r", last], [add], name="residual_add"))
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, 6, 6])]
    if head:
        hn, hw = P.head("s", 8, rng)
        nodes += hn
        inits.update(hw)
        outputs = None
    return P.model(nodes, inits, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 6, 6])], outputs)


def _group_read_by(a: Analysis, conv: str):
    return next(g for g in a.prunable if any(c.name == conv for c in consumers_of(a, g)))


def _rows(t: np.ndarray) -> np.ndarray:
    """[N, C, H, W] -> one row per position, as a 1x1 Conv's statistics see it."""
    return t.transpose(0, 2, 3, 1).reshape(-1, t.shape[1]).astype(np.float64)


def _scale(m: onnx.ModelProto, between: str) -> np.ndarray:
    """The per-channel scale from Conv c's output to the Add."""
    w = {t.name: onnx.numpy_helper.to_array(t).astype(np.float64) for t in m.graph.initializer}
    if between == "bn":
        return w["bn_s"] / np.sqrt(w["bn_v"] + 1e-5)
    return w["mul_k"].reshape(-1) if between == "muladd" else np.ones(8)


@pytest.mark.parametrize("between", AFFINE)
def test_consumer_names_the_residual_operand_only_where_its_output_is_added_to_a_stream(between):
    m = residual_block(head=False, between=between)
    a = Analysis(m)
    by_name = {c.name: c for g in a.prunable for c in consumers_of(a, g)}
    assert by_name["c"].residual == "r", "Conv c's output is added to r"
    scale = by_name["c"].residual_scale
    if between:
        np.testing.assert_allclose(scale, _scale(m, between), rtol=1e-6)
    else:
        assert scale is None
    assert by_name["a"].residual is None, "Conv a writes the stream itself; no Add reads its output alone"


def test_no_residual_where_the_path_to_the_add_is_not_per_channel_affine():
    m = residual_block(head=False, between="muladd")
    # a constant that varies over positions is not a per-channel scale
    for t in m.graph.initializer:
        if t.name == "mul_k":
            t.CopyFrom(onnx.numpy_helper.from_array(np.full((1, 8, 6, 6), 1.5, np.float32), "mul_k"))
    a = Analysis(m)
    (c,) = consumers_of(a, _group_read_by(a, "c"))
    assert c.residual is None


@pytest.mark.parametrize("cached,between", [(False, ""), (True, ""), (False, "bn"), (True, "muladd")])
def test_statistics_target_the_original_sum_on_the_kept_output_channels(cached, between):
    m = residual_block(head=True, between=between)
    a = Analysis(m)
    x = np.random.default_rng(1).standard_normal((12, 3, 6, 6)).astype(np.float32)
    cal = load_calibration({"x": x}, a.model, holdout=0.0)
    gp, gb = _group_read_by(a, "a"), _group_read_by(a, "c")
    sel = Selection({gp.id: np.arange(0, gp.channels, 2)}, {gp.id: np.ones(gp.channels // 2)})
    masked = apply_selection(a, sel, masked=True)
    (c,) = consumers_of(a, gb)
    keep = np.arange(8) % 3 != 0           # output channels 0, 3, 6 pruned: their target stays the original output
    opts = CalibrationOptions(batch_size=5, max_positions=None if not cached else 36)
    col = Collector([c], opts, seed=0)
    if cached:
        plan = OutputCache.plan([c], {t.name: t.shape for t in a.graph.tensors().values()}, 36, cal.size)
        assert plan is not None and (c.node, "residual") in plan
        out = OutputCache.build(cal, a.model, [c], {t.name: t.shape for t in a.graph.tensors().values()}, plan,
                                5, 36, 0)
    else:
        out = Tap(a.model, [c.output, "r"])
    col.run(cal, Tap(masked, [c.input, "r"]), out, "test", {c.node: keep})
    orig = Tap(a.model, ["c", "r"])({"x": x})
    pruned = Tap(masked, ["br", "r"])({"x": x})
    target = _rows(orig["c"]) + keep * (_rows(orig["r"]) - _rows(pruned["r"])) / _scale(m, between)
    feats = np.concatenate([_rows(pruned["br"]), np.ones((len(target), 1))], 1)
    A, B, yy = col.stats["calib"][c.node].numpy()
    np.testing.assert_allclose(A, feats.T @ feats, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(B, feats.T @ target, rtol=1e-6, atol=1e-6)
    assert yy == pytest.approx(float((target ** 2).sum()), rel=1e-6)
    assert not np.allclose(_rows(orig["r"]), _rows(pruned["r"]), atol=1e-3), "the pruned group changed the stream"


def _sum_error(model: onnx.ModelProto, x: np.ndarray, ref: np.ndarray) -> float:
    return float(((Tap(model, ["y"])({"x": x})["y"].astype(np.float64) - ref) ** 2).sum())


@pytest.mark.parametrize("between", AFFINE)
def test_the_refit_imitates_the_sum_and_reaches_its_least_squares_optimum(tmp_path, between):
    """Conv c reads every channel of Relu(p), so it can give back what pruning p took from the stream r: with
    residual targets the sum's error is the least-squares optimum (near zero), without it the stream's error.
    Per-channel affine ops between Conv c and the Add do not change the optimum."""
    m = residual_block(head=False, b_reads="x", between=between)
    a = Analysis(m)
    gb = _group_read_by(a, "c")
    x = np.random.default_rng(2).standard_normal((40, 3, 6, 6)).astype(np.float32)
    ref = Tap(m, ["y"])({"x": x})["y"].astype(np.float64)
    # magnitude chooses the same channels either way; without a held-out split the ridge is fixed
    common = dict(method="magnitude", refit="full", keep_ratio=0.5, keep={gb.id: gb.channels}, allocate="uniform",
                  holdout=0.0, max_positions=None, batch_size=8)
    on, _ = prune(m, {"x": x}, residual_target=True, **common)
    off, _ = prune(m, {"x": x}, residual_target=False, **common)
    path = tmp_path / "on.onnx"
    onnx.save(on, str(path))
    on = onnx.load(str(path))
    err_on, err_off = _sum_error(on, x, ref), _sum_error(off, x, ref)
    # the best Conv c can do given the pruned network's features and stream
    t = Tap(on, ["br", "r"])({"x": x})
    feats = np.concatenate([_rows(t["br"]), np.ones((_rows(t["br"]).shape[0], 1))], 1)
    goal = _rows(ref) - _rows(t["r"])
    best = float(((goal - feats @ np.linalg.lstsq(feats, goal, rcond=None)[0]) ** 2).sum())
    assert err_on == pytest.approx(best, rel=1e-2, abs=1e-3 * float((ref ** 2).sum()))
    assert err_on < 0.01 * err_off, (err_on, err_off)


@pytest.mark.parametrize("flag", ["--residual-target", "--no-residual-target"])
def test_the_command_line_switch_reaches_the_pass_and_the_report_says_which_sums_are_imitated(tmp_path, flag):
    from click.testing import CliRunner

    from onnxprune.cli import main

    m = tmp_path / "m.onnx"
    onnx.save(residual_block(head=True), str(m))
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(3).standard_normal((24, 3, 6, 6)).astype(np.float32))
    out, rep = tmp_path / "p.onnx", tmp_path / "r.json"
    res = CliRunner().invoke(main, ["prune", str(m), "-o", str(out), "--calib", str(tmp_path / "calib.npz"),
                                    "--keep-ratio", "0.5", "--report", str(rep), flag], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    notes = {g["id"]: g.get("note") or "" for g in json.loads(rep.read_text())["groups"]}
    a = Analysis(residual_block(head=True))
    said = "imitates the residual sum after c" in notes[_group_read_by(a, "c").id]
    assert said == (flag == "--residual-target"), notes
    assert not any("residual sum" in n for gid, n in notes.items() if gid != _group_read_by(a, "c").id)
    x = np.random.default_rng(4).standard_normal((2, 3, 6, 6)).astype(np.float32)
    assert Tap(onnx.load(str(out)), ["y"])({"x": x})["y"].shape == (2, 10)
