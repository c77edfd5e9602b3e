"""Models exported without a dynamic batch axis (torch.onnx.export's default, a TF signature of [1, ...]): every
run takes exactly the declared batch B (docs/DESIGN.md, "Fixed batch"). The oracle: the same network exported
with a symbolic batch prunes to the same weights, and batch-B runs of the result match it."""
import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from helpers import load_in_ort, rel_err, run_file
from onnx import TensorProto, helper, numpy_helper

import onnxprune
from onnxprune.cli import main


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def _net(path, batch):
    """x[B, 3, 8, 8] -> Conv(16) -> Relu -> Conv(16) -> Relu -> GAP -> Reshape(B, 16) -> Gemm(10). With an int B
    the batch is fixed and the Reshape's shape constant holds it (a traced export's form); with B None the
    batch is symbolic and the Reshape reads [-1, 16]."""
    rng = np.random.default_rng(0)

    def w(n, *s):
        return numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
    shape = numpy_helper.from_array(np.array([batch or -1, 16], np.int64), "shape")
    inits = [w("w1", 16, 3, 3, 3), w("w2", 16, 16, 3, 3), w("fc", 10, 16), w("fcb", 10), shape]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1] * 4, name="c1"),
             helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("Conv", ["r", "w2"], ["b"], pads=[1] * 4, name="c2"),
             helper.make_node("Relu", ["b"], ["rb"]),
             helper.make_node("GlobalAveragePool", ["rb"], ["g"]),
             helper.make_node("Reshape", ["g", "shape"], ["f"]),
             helper.make_node("Gemm", ["f", "fc", "fcb"], ["y"], transB=1, name="fc")]
    dim = batch or "N"
    g = helper.make_graph(nodes, "net", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [dim, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [dim, 10])], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def _data(path, n, seed=0):
    np.savez(path, x=np.random.default_rng(seed).standard_normal((n, 3, 8, 8)).astype(np.float32))
    return path


def _weights(model):
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer if i.name != "shape"}


def test_fixed_batch_one_prunes_as_the_dynamic_export_does(tmp_path):
    fixed, dynamic = _net(tmp_path / "fixed.onnx", 1), _net(tmp_path / "dyn.onnx", None)
    calib = _data(tmp_path / "c.npz", 40)
    kw = dict(method="greedy-local", keep_ratio=0.5, round_to=1, batch_size=16, quiet=True)
    got, report = onnxprune.prune(str(fixed), str(calib), **kw)
    want, _ = onnxprune.prune(str(dynamic), str(calib), **kw)
    got_w, want_w = _weights(got), _weights(want)
    assert got_w.keys() == want_w.keys()
    assert got_w["w1"].shape[0] == 8  # really pruned
    for k in want_w:
        np.testing.assert_allclose(got_w[k], want_w[k], rtol=1e-4, atol=1e-5, err_msg=k)
    onnxprune.save_model(got, tmp_path / "p.onnx")
    onnxprune.save_model(want, tmp_path / "q.onnx")
    x = np.random.default_rng(1).standard_normal((4, 3, 8, 8)).astype(np.float32)
    rows = np.concatenate([run_file(tmp_path / "p.onnx", {"x": x[i:i + 1]})[0] for i in range(4)])
    assert rel_err([rows], run_file(tmp_path / "q.onnx", {"x": x})) < 1e-4
    assert load_in_ort(tmp_path / "p.onnx").get_inputs()[0].shape == [1, 3, 8, 8]  # the export's batch kept


def test_fixed_batch_cli_prune_and_eval(tmp_path):
    model, calib = _net(tmp_path / "fixed.onnx", 1), _data(tmp_path / "c.npz", 24)
    res = invoke("prune", model, "-o", tmp_path / "o.onnx", "--calib", calib, "--flops", "0.6", "--round-to", "1",
                 "--allocate", "uniform")
    assert res.exit_code == 0, res.output
    assert "batch  fixed at 1 by the model's inputs" in res.output
    load_in_ort(tmp_path / "o.onnx")
    res = invoke("eval", model, tmp_path / "o.onnx", "--data", _data(tmp_path / "t.npz", 10, seed=3), "--json")
    assert res.exit_code == 0, res.output


@pytest.mark.parametrize("n, holdout, ok", [(32, "0.25", True), (30, "0", False), (32, "0.1", False)])
def test_fixed_batch_above_one_runs_whole_batches_or_refuses(tmp_path, n, holdout, ok):
    model, calib = _net(tmp_path / "fixed.onnx", 4), _data(tmp_path / "c.npz", n)
    out = tmp_path / "o.onnx"
    res = invoke("prune", model, "-o", out, "--calib", calib, "--keep-ratio", "0.5", "--round-to", "1",
                 "--holdout", holdout)
    if ok:
        assert res.exit_code == 0, res.output
        x = np.random.default_rng(1).standard_normal((4, 3, 8, 8)).astype(np.float32)
        assert run_file(out, {"x": x})[0].shape == (4, 10)
    else:
        assert res.exit_code == 2, res.output
        lines = [line for line in res.output.splitlines() if line.startswith("onnxprune: error")]
        assert len(lines) == 1 and "fixed batch dimension 4" in lines[0], res.output
        assert "Traceback" not in res.output and not out.exists()


def test_inputs_with_different_fixed_first_dims_are_refused(tmp_path):
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["x", "w"], ["a"], name="c"), helper.make_node("Relu", ["a"], ["y"]),
             helper.make_node("Relu", ["z"], ["y2"])]
    g = helper.make_graph(nodes, "two", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4]),
                                         helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, 5])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 4, 4]),
                           helper.make_tensor_value_info("y2", TensorProto.FLOAT, [2, 5])],
                          [numpy_helper.from_array(rng.standard_normal((4, 3, 1, 1)).astype(np.float32), "w")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "m.onnx")
    np.savez(tmp_path / "c.npz", x=np.zeros((4, 3, 4, 4), np.float32), z=np.zeros((4, 5), np.float32))
    res = invoke("prune", tmp_path / "m.onnx", "-o", tmp_path / "o.onnx", "--calib", tmp_path / "c.npz",
                 "--keep-ratio", "0.5", "--round-to", "1")
    assert res.exit_code == 2, res.output
    assert "different fixed first dimensions" in res.output and "'x': 1" in res.output and "'z': 2" in res.output
    assert not (tmp_path / "o.onnx").exists()


def test_taps_run_b_samples_at_a_time_and_join_batch_first_outputs(tmp_path):
    """The statistics take whole calibration batches of a fixed-batch model: the tap runs it B samples per call
    and joins the outputs, equal to the dynamic export's outputs on the whole batch. A tapped tensor that is not
    batch first (here the Reshape's [1, 16] read as [16] rows would be) is never joined."""
    from onnxprune.analysis import Analysis
    from onnxprune.calibration.taps import Tap
    fixed = Analysis(onnxprune.load_model(_net(tmp_path / "fixed.onnx", 1))).model
    dynamic = Analysis(onnxprune.load_model(_net(tmp_path / "dyn.onnx", None))).model
    x = {"x": np.random.default_rng(2).standard_normal((6, 3, 8, 8)).astype(np.float32)}
    tap = Tap(fixed, ["r", "f"])
    assert tap.fixed == 1 and tap.joins
    got, want = tap(x), Tap(dynamic, ["r", "f"])(x)
    for name in ("r", "f"):
        assert got[name].shape == want[name].shape and rel_err([got[name]], [want[name]]) < 1e-6
    # the GAP output squeezed to [16] (no batch axis): not batch first, so runs stay one per B samples
    sq = onnx.load(tmp_path / "fixed.onnx")
    sq.graph.initializer.append(numpy_helper.from_array(np.array([16], np.int64), "flat"))
    sq.graph.node.insert(5, helper.make_node("Reshape", ["g", "flat"], ["v"]))
    sq.graph.node.insert(6, helper.make_node("Relu", ["v"], ["rv"]))
    sq.graph.output.append(helper.make_tensor_value_info("rv", TensorProto.FLOAT, [16]))
    assert not Tap(Analysis(sq).model, ["rv"]).joins
