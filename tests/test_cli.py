"""The command line: outputs, report fields, and the bad-input matrix (exit 2, one line, no file)."""
import json
import shutil

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from helpers import load_in_ort, rel_err, run, run_file
from onnx import TensorProto, helper

from onnxprune.analysis.cost import model_macs
from onnxprune.cli import main
from onnxprune.graph.params import count_params


@pytest.fixture
def model_path(zoo_models, tmp_path):
    z = next(z for z in zoo_models if z.name == "basic_res" and z.exporter == "ts17")
    dst = tmp_path / "model.onnx"
    shutil.copy(z.path, dst)
    return dst


@pytest.fixture(autouse=True)
def devices_are_never_replaced(monkeypatch):
    """The matrix points outputs at /dev/null and /dev/stdout: a regression must fail the test, not replace the
    machine's devices (an atomic rename onto them would)."""
    import os
    replace = os.replace

    def guarded(src, dst, *a, **k):
        if os.path.realpath(dst).startswith(("/dev/", "/proc/")) or str(dst).startswith("/dev/"):
            raise AssertionError(f"onnxprune would replace {dst}")
        return replace(src, dst, *a, **k)
    monkeypatch.setattr(os, "replace", guarded)


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_analyze_json(model_path):
    res = invoke("analyze", model_path, "--json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["macs"] > 0 and data["params"] > 0
    keys = {"id", "channels", "frozen", "reason", "producers", "consumers", "macs_share"}
    assert all(keys <= set(g) for g in data["groups"])
    assert any(not g["frozen"] for g in data["groups"])
    assert invoke("analyze", model_path).exit_code == 0


def test_prune_writes_model_report_and_masked_reference(model_path, tmp_path):
    out, rep, masked = tmp_path / "p.onnx", tmp_path / "r.json", tmp_path / "m.onnx"
    res = invoke("prune", model_path, "-o", out, "--method", "magnitude", "--flops", "0.5", "--report", rep,
                 "--masked-reference", masked)
    assert res.exit_code == 0, res.output
    r = json.loads(rep.read_text())
    # the report's figures are those of the written models, measured afresh
    assert r["macs_before"] == model_macs(onnx.load(model_path)) and r["macs_after"] == model_macs(onnx.load(out))
    assert abs(r["macs_after"] / r["macs_before"] - 0.5) <= 0.02 * 0.5
    assert r["params_before"] == count_params(onnx.load(model_path))
    assert r["params_after"] == count_params(onnx.load(out)) < r["params_before"]
    assert all({"id", "channels", "kept", "gamma"} <= set(g) for g in r["groups"])
    feeds = {"input": np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)}
    assert rel_err(run_file(out, feeds), run_file(masked, feeds)) <= 1e-4
    assert "MACs" in res.stdout


def test_eval_json(model_path, tmp_path):
    out = tmp_path / "p.onnx"
    assert invoke("prune", model_path, "-o", out, "--method", "magnitude", "--keep-ratio", "0.5").exit_code == 0
    load_in_ort(out)
    x = np.random.default_rng(0).standard_normal((20, 3, 16, 16)).astype(np.float32)
    data = tmp_path / "d.npz"
    np.savez(data, input=x, labels=np.arange(20) % 10)
    res = invoke("eval", model_path, out, "--data", data, "--json")
    assert res.exit_code == 0, res.output
    r = json.loads(res.stdout)
    a, b = run(onnx.load(model_path), {"input": x})[0], run(onnx.load(out), {"input": x})[0]
    assert r["agreement"] == pytest.approx(float((a.argmax(1) == b.argmax(1)).mean()))
    assert r["accuracy_original"] == pytest.approx(float((a.argmax(1) == np.arange(20) % 10).mean()))
    assert r["accuracy_pruned"] == pytest.approx(float((b.argmax(1) == np.arange(20) % 10).mean()))
    la = a - np.log(np.exp(a - a.max(1, keepdims=True)).sum(1, keepdims=True)) - a.max(1, keepdims=True)
    lb = b - np.log(np.exp(b - b.max(1, keepdims=True)).sum(1, keepdims=True)) - b.max(1, keepdims=True)
    assert r["kl"] == pytest.approx(float((np.exp(la) * (la - lb)).sum(1).mean()), rel=1e-4, abs=1e-7)
    res = invoke("eval", model_path, model_path, "--data", data, "--json")
    assert json.loads(res.stdout)["agreement"] == 1.0
    np.savez(data, input=x)
    assert json.loads(invoke("eval", model_path, out, "--data", data, "--json").stdout)["accuracy_pruned"] is None


def _no_conv_model(path):
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


HALF_MAG = ("--flops", "0.5", "--method", "magnitude")
BAD = {
    "missing file": lambda d, m: ["prune", d / "nope.onnx", "-o", d / "o.onnx", *HALF_MAG],
    "truncated": lambda d, m: ["prune", _truncated(d, m), "-o", d / "o.onnx", *HALF_MAG],
    "random bytes": lambda d, m: ["prune", _random_bytes(d), "-o", d / "o.onnx", *HALF_MAG],
    "no conv": lambda d, m: ["prune", _no_conv_model(d / "relu.onnx"), "-o", d / "o.onnx", *HALF_MAG],
    "qdq-quantized model": lambda d, m: ["prune", _quantized(d, m, "QDQ"), "-o", d / "o.onnx", *HALF_MAG],
    "qoperator-quantized model": lambda d, m: ["analyze", _quantized(d, m, "QOperator")],
    "flops 0": lambda d, m: ["prune", m, "-o", d / "o.onnx", "--flops", "0", "--method", "magnitude"],
    "no target": lambda d, m: ["prune", m, "-o", d / "o.onnx", "--method", "magnitude"],
    "output is input": lambda d, m: ["prune", m, "-o", m, *HALF_MAG],
    "missing folder": lambda d, m: ["prune", m, "-o", d / "nodir" / "o.onnx", *HALF_MAG],
    "output is folder": lambda d, m: ["prune", m, "-o", d, *HALF_MAG],
    "bad keep": lambda d, m: ["prune", m, "-o", d / "o.onnx", *HALF_MAG, "--keep", "999=3"],
    "greedy without calib": lambda d, m: ["prune", m, "-o", d / "o.onnx", "--flops", "0.5"],
    "calib wrong shape": lambda d, m: ["prune", m, "-o", d / "o.onnx", "--flops", "0.5", "--calib",
                                       _npz(d, input=np.zeros((8, 3, 8, 8), np.float32))],
    "calib nan": lambda d, m: ["prune", m, "-o", d / "o.onnx", "--flops", "0.5", "--calib",
                               _npz(d, input=np.full((8, 3, 16, 16), np.nan, np.float32))],
    "calib identical samples": lambda d, m: ["prune", m, "-o", d / "o.onnx", "--flops", "0.5", "--calib",
                                             _npz(d, input=np.ones((8, 3, 16, 16), np.float32))],
    "calib pickled": lambda d, m: ["prune", m, "-o", d / "o.onnx", "--flops", "0.5", "--calib",
                                   _npz(d, input=np.array([{"a": 1}], dtype=object))],
    "calib wrong dtype": lambda d, m: ["prune", m, "-o", d / "o.onnx", "--flops", "0.5", "--calib",
                                       _npz(d, input=np.zeros((8, 3, 16, 16)))],
    "calib wrong name": lambda d, m: ["prune", m, "-o", d / "o.onnx", "--flops", "0.5", "--calib",
                                      _npz(d, x=np.zeros((8, 3, 16, 16), np.float32))],
    "calib empty": lambda d, m: ["prune", m, "-o", d / "o.onnx", "--flops", "0.5", "--calib",
                                 _npz(d, input=np.zeros((0, 3, 16, 16), np.float32))],
    "eval wrong key": lambda d, m: ["eval", m, m, "--data", _npz(d, x=np.zeros((2, 3, 16, 16), np.float32))],
    "eval wrong shape": lambda d, m: ["eval", m, m, "--data", _npz(d, input=np.zeros((2, 3, 8, 8), np.float32))],
    "eval wrong dtype": lambda d, m: ["eval", m, m, "--data", _npz(d, input=np.zeros((2, 3, 16, 16)))],
    "eval nan": lambda d, m: ["eval", m, m, "--data", _npz(d, input=np.full((2, 3, 16, 16), np.nan, np.float32))],
    "eval pickled": lambda d, m: ["eval", m, m, "--data", _npz(d, input=np.array([{"a": 1}], dtype=object))],
    # issue 16, item 11: collisions between inputs and outputs, and among outputs (resolved paths, inodes)
    "report is calib": lambda d, m: ["prune", m, "-o", d / "o.onnx", "--keep-ratio", "0.5", "--calib", _calib(d),
                                     "--report", d / "c.npz"],
    "report is calib spelt ./": lambda d, m: ["prune", m, "-o", d / "o.onnx", "--keep-ratio", "0.5", "--calib",
                                              _calib(d), "--report", f"{_mkdir(d / 'sub')}/../c.npz"],
    "report hard link to calib": lambda d, m: ["prune", m, "-o", d / "o.onnx", "--keep-ratio", "0.5", "--calib",
                                               _calib(d), "--report", _hard_link(_calib(d), d / "r.json")],
    "output is calib": lambda d, m: ["prune", m, "-o", _calib(d), "--keep-ratio", "0.5", "--calib", _calib(d)],
    "output inside calib folder": lambda d, m: ["prune", m, "-o", _calib_dir(d) / "o.onnx", "--keep-ratio", "0.5",
                                                "--calib", _calib_dir(d)],
    "report is output": lambda d, m: ["prune", m, "-o", d / "o.onnx", *HALF_MAG, "--report", d / "o.onnx"],
    "masked is output": lambda d, m: ["prune", m, "-o", d / "o.onnx", *HALF_MAG, "--masked-reference", d / "o.onnx"],
    "report is masked data": lambda d, m: ["prune", m, "-o", d / "o.onnx", *HALF_MAG, "--masked-reference",
                                           d / "m.onnx", "--report", d / "m.onnx.data"],
    "output data is input data": lambda d, m: ["prune", _external_model(d, m, "o.onnx.data"), "-o", d / "o.onnx",
                                               *HALF_MAG],
    "output is input via symlink": lambda d, m: ["prune", _symlink(d / "lnk.onnx", m), "-o", m, *HALF_MAG],
    "output is hard link to input": lambda d, m: ["prune", m, "-o", _hard_link(m, d / "h.onnx"), *HALF_MAG],
    "html page is report": lambda d, m: ["report", _report_json(d), "-o", d / "r.json"],
    # issue 16, item 12: outputs are regular files; links, devices and '-' are refused, never replaced
    "output is symlink": lambda d, m: ["prune", m, "-o", _symlink(d / "o.onnx", _touch(d / "target.onnx")),
                                       *HALF_MAG],
    "output is dangling symlink": lambda d, m: ["prune", m, "-o", _symlink(d / "o.onnx", d / "nowhere.onnx"),
                                                *HALF_MAG],
    "output is /dev/null": lambda d, m: ["prune", m, "-o", "/dev/null", *HALF_MAG],
    "output is /dev/stdout": lambda d, m: ["prune", m, "-o", "/dev/stdout", *HALF_MAG],
    "output is dash": lambda d, m: ["prune", m, "-o", "-", *HALF_MAG],
    "report is /dev/stdout": lambda d, m: ["prune", m, "-o", d / "o.onnx", *HALF_MAG, "--report", "/dev/stdout"],
    "html page is /dev/null": lambda d, m: ["report", _report_json(d), "-o", "/dev/null"],
    "output is fifo": lambda d, m: ["prune", m, "-o", _fifo(d / "o.onnx"), *HALF_MAG],
    # issue 16, item 15: every option value of every subcommand is checked at the boundary
    "batch size 0": lambda d, m: ["prune", m, "-o", d / "o.onnx", "--keep-ratio", "0.5", "--calib", _calib(d),
                                  "--batch-size", "0"],
    "batch size negative": lambda d, m: ["prune", m, "-o", d / "o.onnx", "--keep-ratio", "0.5", "--calib", _calib(d),
                                         "--batch-size", "-4"],
    "holdout 1": lambda d, m: ["prune", m, "-o", d / "o.onnx", "--keep-ratio", "0.5", "--calib", _calib(d),
                               "--holdout", "1"],
    "holdout 2": lambda d, m: ["prune", m, "-o", d / "o.onnx", "--keep-ratio", "0.5", "--calib", _calib(d),
                               "--holdout", "2"],
    "holdout negative": lambda d, m: ["prune", m, "-o", d / "o.onnx", "--keep-ratio", "0.5", "--calib", _calib(d),
                                      "--holdout", "-0.1"],
    "holdout nan": lambda d, m: ["prune", m, "-o", d / "o.onnx", "--keep-ratio", "0.5", "--calib", _calib(d),
                                 "--holdout", "nan"],
    "holdout leaves no sample": lambda d, m: ["prune", m, "-o", d / "o.onnx", "--keep-ratio", "0.5", "--calib",
                                              _calib(d), "--holdout", "0.97"],
    "max positions negative": lambda d, m: ["prune", m, "-o", d / "o.onnx", "--keep-ratio", "0.5", "--calib",
                                            _calib(d), "--max-positions", "-1"],
    "seed negative": lambda d, m: ["prune", m, "-o", d / "o.onnx", "--keep-ratio", "0.5", "--method", "random",
                                   "--seed", "-1"],
    "global samples 0": lambda d, m: ["prune", m, "-o", d / "o.onnx", "--keep-ratio", "0.5", "--calib", _calib(d),
                                      "--method", "greedy-taylor", "--global-samples", "0"],
    "image size negative": lambda d, m: ["prune", m, "-o", d / "o.onnx", "--keep-ratio", "0.5", "--calib", _calib(d),
                                         "--image-size", "-5"],
    "image size huge": lambda d, m: ["prune", m, "-o", d / "o.onnx", "--keep-ratio", "0.5", "--calib", _calib(d),
                                     "--image-size", "100000"],
    "round to 0": lambda d, m: ["prune", m, "-o", d / "o.onnx", *HALF_MAG, "--round-to", "0"],
    "min channels 0": lambda d, m: ["prune", m, "-o", d / "o.onnx", *HALF_MAG, "--min-channels", "0"],
    "flops nan": lambda d, m: ["prune", m, "-o", d / "o.onnx", "--flops", "nan", "--method", "magnitude"],
    "flops inf": lambda d, m: ["prune", m, "-o", d / "o.onnx", "--flops", "inf", "--method", "magnitude"],
    "params huge": lambda d, m: ["prune", m, "-o", d / "o.onnx", "--params", "1e308", "--method", "magnitude"],
    "keep ratio -inf": lambda d, m: ["prune", m, "-o", d / "o.onnx", "--keep-ratio", "-inf", "--method", "magnitude"],
    "keep non-ascii digits": lambda d, m: ["prune", m, "-o", d / "o.onnx", *HALF_MAG, "--keep", "\u00b2=3"],
    "keep not a pair": lambda d, m: ["prune", m, "-o", d / "o.onnx", *HALF_MAG, "--keep", "3"],
    "eval batch size 0": lambda d, m: ["eval", m, m, "--data", _calib(d), "--batch-size", "0"],
    "eval batch size negative": lambda d, m: ["eval", m, m, "--data", _calib(d), "--batch-size", "-1"],
    "input shape not numbers": lambda d, m: ["prune", m, "-o", d / "o.onnx", *HALF_MAG, "--input-shape",
                                             "input=1,3,a,16"],
    "input shape unknown input": lambda d, m: ["prune", m, "-o", d / "o.onnx", *HALF_MAG, "--input-shape",
                                               "nosuch=1,3,16,16"],
    "input shape wrong rank": lambda d, m: ["prune", m, "-o", d / "o.onnx", *HALF_MAG, "--input-shape",
                                            "input=1,3,16"],
    "input shape against fixed dim": lambda d, m: ["prune", m, "-o", d / "o.onnx", *HALF_MAG, "--input-shape",
                                                   "input=1,4,16,16"],
    "input shape zero": lambda d, m: ["prune", m, "-o", d / "o.onnx", *HALF_MAG, "--input-shape", "input=0,3,16,16"],
    "input shape huge": lambda d, m: ["prune", m, "-o", d / "o.onnx", *HALF_MAG, "--input-shape",
                                      "input=1,3,99999999999,16"],
    "input shape twice": lambda d, m: ["prune", m, "-o", d / "o.onnx", *HALF_MAG, "--input-shape", "input=1,3,16,16",
                                       "--input-shape", "input=2,3,16,16"],
    "analyze input shape bad": lambda d, m: ["analyze", m, "--input-shape", "input=1,3"],
    # issue 16, item 16: hostile files
    "model fifo": lambda d, m: ["prune", _fifo(d / "m.onnx"), "-o", d / "o.onnx", *HALF_MAG],
    "analyze fifo": lambda d, m: ["analyze", _fifo(d / "m.onnx")],
    "model is /dev/zero": lambda d, m: ["prune", "/dev/zero", "-o", d / "o.onnx", *HALF_MAG],
    "model symlink to /dev/urandom": lambda d, m: ["analyze", _symlink(d / "m.onnx", "/dev/urandom")],
    "external data location with NUL": lambda d, m: ["prune", _nul_location(d, m), "-o", d / "o.onnx", *HALF_MAG],
    "calib fifo": lambda d, m: ["prune", m, "-o", d / "o.onnx", "--keep-ratio", "0.5", "--calib", _fifo(d / "c.npz")],
    "calib symlink to /dev/zero": lambda d, m: ["prune", m, "-o", d / "o.onnx", "--keep-ratio", "0.5", "--calib",
                                                _symlink(d / "c.npz", "/dev/zero")],
    "calib folder with a link to /dev/urandom": lambda d, m: ["prune", m, "-o", d / "o.onnx", "--keep-ratio", "0.5",
                                                              "--calib", _device_in_folder(d)],
    "calib bad crc": lambda d, m: ["prune", m, "-o", d / "o.onnx", "--keep-ratio", "0.5", "--calib", _bad_crc(d)],
    "calib header declares 100 GB": lambda d, m: ["prune", m, "-o", d / "o.onnx", "--keep-ratio", "0.5", "--calib",
                                                  _lying_header(d, 10**8)],
    "calib truncated member": lambda d, m: ["prune", m, "-o", d / "o.onnx", "--keep-ratio", "0.5", "--calib",
                                            _lying_header(d, 32)],
    "calib .npy header declares 100 GB": lambda d, m: ["prune", m, "-o", d / "o.onnx", "--keep-ratio", "0.5",
                                                       "--calib", _lying_npy(d, 10**8)],
    "eval data fifo": lambda d, m: ["eval", m, m, "--data", _fifo(d / "d.npz")],
    "eval data symlink to /dev/zero": lambda d, m: ["eval", m, m, "--data", _symlink(d / "d.npz", "/dev/zero")],
    "eval bad crc": lambda d, m: ["eval", m, m, "--data", _bad_crc(d)],
    "eval header declares 100 GB": lambda d, m: ["eval", m, m, "--data", _lying_header(d, 10**8)],
    "eval truncated member": lambda d, m: ["eval", m, m, "--data", _lying_header(d, 32)],
    "eval not a zip": lambda d, m: ["eval", m, m, "--data", _touch(d / "d.npz")],
    # issue 16, item 17: graphs
    "zero-channel conv": lambda d, m: ["prune", _zero_channel_conv(d / "z.onnx"), "-o", d / "o.onnx", *HALF_MAG],
    "zero-channel conv analyze": lambda d, m: ["analyze", _zero_channel_conv(d / "z.onnx")],
    "run-time reshape error in calibration": lambda d, m: [
        "prune", _run_time_error(d / "r.onnx", "Reshape"), "-o", d / "o.onnx", "--keep-ratio", "0.5", "-q",
        "--calib", _npz(d, x=np.random.default_rng(0).random((16, 3, 8, 8), np.float32))],
    "run-time tile error in calibration": lambda d, m: [
        "prune", _run_time_error(d / "r.onnx", "Tile"), "-o", d / "o.onnx", "--keep-ratio", "0.5", "-q",
        "--calib", _npz(d, x=np.random.default_rng(0).random((16, 3, 8, 8), np.float32))],
    "run-time reshape error in eval": lambda d, m: [
        "eval", _run_time_error(d / "r.onnx", "Reshape"), _run_time_error(d / "r.onnx", "Reshape"), "--data",
        _npz(d, x=np.zeros((4, 3, 8, 8), np.float32))],
    # issue 16, item 18: eval of models that do not match; malformed report JSON
    "eval different input names": lambda d, m: ["eval", m, _renamed_input(d, m), "--data", _calib(d)],
    "eval different output sizes": lambda d, m: ["eval", m, _sliced_output(d, m), "--data", _calib(d)],
    "report missing field": lambda d, m: ["report", _bad_report(d, drop="groups"), "-o", d / "r.html"],
    "report wrong type": lambda d, m: ["report", _bad_report(d, macs_before="10"), "-o", d / "r.html"],
    "report group id a string": lambda d, m: ["report", _bad_report(d, groups=[_group(id="<script>")]),
                                              "-o", d / "r.html"],
    "report group not an object": lambda d, m: ["report", _bad_report(d, groups=[3]), "-o", d / "r.html"],
    "report layers wrong type": lambda d, m: ["report", _bad_report(d, layers=[{"node": 1}]), "-o", d / "r.html"],
    "report is a list": lambda d, m: ["report", _write(d / "r.json", "[]"), "-o", d / "r.html"],
    "report deeply nested": lambda d, m: ["report", _write(d / "r.json", "[" * 100000), "-o", d / "r.html"],
    "report not utf-8": lambda d, m: ["report", _write(d / "r.json", b"\xff\xfe{"), "-o", d / "r.html"],
    "report fifo": lambda d, m: ["report", _fifo(d / "r.json"), "-o", d / "r.html"],
}


# what the one line must name, where the exit code alone does not show the right refusal
MUST_SAY = {"qdq-quantized model": "a QDQ-quantized model", "qoperator-quantized model": "a quantized model (",
            "calib identical samples": "samples are identical",
            "eval truncated member": "truncated", "calib truncated member": "truncated",
            "eval header declares 100 GB": "declares", "calib header declares 100 GB": "declares",
            "zero-channel conv": "empty_conv", "zero-channel conv analyze": "empty_conv",
            "run-time reshape error in calibration": "bad_reshape", "run-time tile error in calibration": "huge_tile",
            "run-time reshape error in eval": "bad_reshape", "calib bad crc": "CRC", "eval bad crc": "CRC",
            "holdout leaves no sample": "--holdout", "eval batch size 0": "--batch-size",
            "input shape unknown input": "nosuch", "model is /dev/zero": "/dev/zero",
            "external data location with NUL": "NUL", "eval different output sizes": "shape",
            "eval different input names": "pixels", "report missing field": "groups"}


def _quantized(d, m, fmt: str, nodes: list[str] | None = None):
    """`m` statically quantized to int8 by ONNX Runtime's tool, in its QDQ or QOperator format (only `nodes`
    when given)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            sess = load_in_ort(m)
            inp = sess.get_inputs()[0]
            shape = [d if isinstance(d, int) else 1 for d in inp.shape]
            self.feeds = iter([{inp.name: np.random.default_rng(i).random(shape, dtype=np.float32)} for i in range(2)])

        def get_next(self):
            return next(self.feeds, None)
    out = d / f"{fmt.lower()}.onnx"
    quantize_static(str(m), str(out), Reader(), quant_format=getattr(QuantFormat, fmt), weight_type=QuantType.QInt8,
                    nodes_to_quantize=nodes)
    return out


def test_partly_quantized_model_counts_every_layers_macs(model_path, tmp_path):
    """One Conv of a QDQ model reads its weight from DequantizeLinear: it is frozen, but its MACs still count, so
    the totals are the float model's and a MACs target is a share of the whole model."""
    import onnxprune
    float_model = onnx.load(str(model_path))
    conv = [n.name for n in float_model.graph.node if n.op_type == "Conv"][1]
    q = _quantized(tmp_path, model_path, "QDQ", nodes=[conv])
    a, f = onnxprune.analyze(str(q)), onnxprune.analyze(str(model_path))
    assert not a.unknown_costs and a.total_macs == f.total_macs, (a.total_macs, f.total_macs)
    assert conv in {c.node for c in a.costs if c.macs > 0}
    out, rep = tmp_path / "o.onnx", tmp_path / "r.json"
    res = invoke("prune", q, "-o", out, "--report", rep, *HALF_MAG)
    assert res.exit_code == 0, res.output
    r = json.loads(rep.read_text())
    assert r["macs_before"] == f.total_macs and abs(r["macs_after"] / r["macs_before"] - 0.5) <= 0.02 * 0.5
    sess = load_in_ort(out)
    inp = sess.get_inputs()[0]
    sess.run(None, {inp.name: np.zeros([d if isinstance(d, int) else 1 for d in inp.shape], np.float32)})


def _write(p, content):
    (p.write_bytes if isinstance(content, bytes) else p.write_text)(content)
    return p


def _group(**kw):
    g = {"id": 0, "channels": 4, "kept_count": 2, "frozen": False, "reasons": [], "method": "magnitude"}
    g.update(kw)
    return g


def _bad_report(d, drop=None, **fields):
    r = {"model": "m", "method": "magnitude", "target": {"flops": 0.5}, "macs_before": 10, "macs_after": 5,
         "params_before": 4, "params_after": 2, "groups": [_group()], "layers": []}
    r.update(fields)
    r.pop(drop, None)
    return _write(d / "r.json", json.dumps(r))


def _renamed_input(d, m):
    model = onnx.load(str(m))
    old = model.graph.input[0].name
    model.graph.input[0].name = "pixels"
    for n in model.graph.node:
        for i, name in enumerate(n.input):
            if name == old:
                n.input[i] = "pixels"
    onnx.save(model, str(d / "renamed.onnx"))
    return d / "renamed.onnx"


def _sliced_output(d, m):
    """The model with its output cut to 5 of its 10 classes."""
    model = onnx.load(str(m))
    out = model.graph.output[0]
    for n in model.graph.node:
        for i, name in enumerate(n.output):
            if name == out.name:
                n.output[i] = "full"
    model.graph.initializer.extend([onnx.numpy_helper.from_array(np.array([v], np.int64), k)
                                    for k, v in (("s0", 0), ("s1", 5), ("ax", 1))])
    model.graph.node.append(helper.make_node("Slice", ["full", "s0", "s1", "ax"], [out.name]))
    out.type.tensor_type.shape.dim[1].dim_value = 5
    onnx.save(model, str(d / "sliced.onnx"))
    return d / "sliced.onnx"


def _nul_location(d, m):
    model = onnx.load(str(_external_model(d, m, "w.data")), load_external_data=False)
    for t in model.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = "w\0.data"
    (d / "in.onnx").write_bytes(model.SerializeToString())
    return d / "in.onnx"


def _device_in_folder(d):
    folder = d / "cal"
    folder.mkdir()
    np.savez(folder / "a.npz", input=np.zeros((8, 3, 16, 16), np.float32))
    (folder / "b.npz").symlink_to("/dev/urandom")
    return folder


def _bad_crc(d):
    """A stored .npz whose array bytes were changed after its CRC was computed."""
    p = _calib(d)
    data = bytearray(p.read_bytes())
    at = data.rfind(b"PK\x01\x02") - 100  # inside the member's data, before the central directory
    data[at] ^= 0xFF
    p.write_bytes(bytes(data))
    return p


def _lying_header(d, rows):
    """An .npz whose member's .npy header declares `rows` x 3 x 16 x 16 float32 but holds 16 rows."""
    import io
    import zipfile
    body = np.zeros((16, 3, 16, 16), np.float32)
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": (rows, 3, 16, 16)})
    p = d / "lying.npz"
    with zipfile.ZipFile(p, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("input.npy", buf.getvalue() + body.tobytes())
    return p


def _lying_npy(d, rows):
    import io
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": (rows, 3, 16, 16)})
    p = d / "lying.npy"
    p.write_bytes(buf.getvalue() + np.zeros((16, 3, 16, 16), np.float32).tobytes())
    return p


def _zero_channel_conv(path):
    from onnx import numpy_helper
    inits = [numpy_helper.from_array(np.ones((8, 3, 3, 3), np.float32), "w1"),
             numpy_helper.from_array(np.zeros((0, 8, 1, 1), np.float32), "w2")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1] * 4, name="c1"),
             helper.make_node("Relu", ["a"], ["r"]), helper.make_node("Conv", ["r", "w2"], ["y"], name="empty_conv")]
    g = helper.make_graph(nodes, "z", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 0, 8, 8])], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def _run_time_error(path, op):
    """x[N, 3, 8, 8] -> {Reshape to [N, 3, 7, -1] (192 values per sample: not a multiple of 21), or Tile by
    1 x 1 x 10^5 x 10^5 (over ONNX Runtime's 4 GB limit)} -> Conv -> Relu -> Conv: shape inference cannot see
    the error, ONNX Runtime meets it on the first batch."""
    from onnx import numpy_helper
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal((4, 8, 1, 1)).astype(np.float32), "w2"),
             numpy_helper.from_array(np.array([3, 7, -1], np.int64), "tail"),
             numpy_helper.from_array(np.array([0], np.int64), "s0"),
             numpy_helper.from_array(np.array([1], np.int64), "s1"),
             numpy_helper.from_array(np.array([1, 1, 100000, 100000], np.int64), "reps")]
    first = (helper.make_node("Reshape", ["x", "target"], ["z"], name="bad_reshape") if op == "Reshape" else
             helper.make_node("Tile", ["x", "reps"], ["z"], name="huge_tile"))
    nodes = [helper.make_node("Shape", ["x"], ["sh"]), helper.make_node("Slice", ["sh", "s0", "s1"], ["n"]),
             helper.make_node("Concat", ["n", "tail"], ["target"], axis=0), first,
             helper.make_node("Conv", ["z", "w1"], ["a"], pads=[1] * 4, name="c1"),
             helper.make_node("Relu", ["a"], ["r"]), helper.make_node("Conv", ["r", "w2"], ["y"], name="c2")]
    g = helper.make_graph(nodes, "rt", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, "h", "w"])], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def _calib(d):
    p = d / "c.npz"
    if not p.exists():
        np.savez(p, input=np.random.default_rng(0).standard_normal((16, 3, 16, 16)).astype(np.float32))
    return p


def _calib_dir(d):
    folder = d / "cal"
    folder.mkdir(exist_ok=True)
    np.savez(folder / "a.npz", input=np.random.default_rng(0).standard_normal((16, 3, 16, 16)).astype(np.float32))
    return folder


def _mkdir(p):
    p.mkdir(exist_ok=True)
    return p


def _hard_link(src, dst):
    import os
    os.link(src, dst)
    return dst


def _symlink(link, target):
    link.symlink_to(target)
    return link


def _touch(p):
    p.write_bytes(b"precious")
    return p


def _fifo(p):
    import os
    os.mkfifo(p)
    return p


def _external_model(d, m, location):
    """A copy of the model whose weights live in the external data file `location` beside it."""
    onnx.save_model(onnx.load(str(m)), str(d / "in.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=location, size_threshold=0)
    return d / "in.onnx"


def _report_json(d):
    p = d / "r.json"
    p.write_text(json.dumps({"model": "m", "method": "magnitude", "target": {"flops": 0.5}, "macs_before": 10,
                             "macs_after": 5, "params_before": 4, "params_after": 2, "groups": [], "layers": []}))
    return p


def _truncated(d, m):
    p = d / "trunc.onnx"
    p.write_bytes(m.read_bytes()[:200])
    return p


def _random_bytes(d):
    p = d / "rand.onnx"
    p.write_bytes(np.random.default_rng(0).bytes(4096))
    return p


def _npz(d, **arrays):
    p = d / "data.npz"
    np.savez(p, **arrays)
    return p


def _snapshot(folder):
    """Every entry under `folder`: a link's target, a file's bytes, a folder's presence."""
    out = {}
    for p in sorted(folder.rglob("*")):
        key = str(p.relative_to(folder))
        out[key] = ("link", str(p.readlink())) if p.is_symlink() else ("file", p.read_bytes()) if p.is_file() \
            else ("other", None)
    return out


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_line_exit_2_no_output(case, model_path, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    args = BAD[case](work, model_path)
    before = _snapshot(work)
    original = model_path.read_bytes()
    res = invoke(*args)
    assert res.exit_code == 2, (res.output, res.stderr)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    assert _snapshot(work) == before, "no output file may be left behind, and no file of the user's changed"
    assert model_path.read_bytes() == original
    assert MUST_SAY.get(case, "") in lines[0], lines[0]


def test_report_html_and_params_target(model_path, tmp_path):
    out, rep, page = tmp_path / "p.onnx", tmp_path / "r.json", tmp_path / "r.html"
    x = np.random.default_rng(0).standard_normal((48, 3, 16, 16)).astype(np.float32)
    np.savez(tmp_path / "cal.npz", input=x)
    res = invoke("prune", model_path, "-o", out, "--calib", tmp_path / "cal.npz", "--params", "0.6", "--report", rep,
                 "-q")
    assert res.exit_code == 0, res.output
    load_in_ort(out)
    r = json.loads(rep.read_text())
    assert abs(r["params_after"] / r["params_before"] - 0.6) <= 0.02 * 0.6 + 0.02
    assert any(g["curve"] and g["err_calib"] is not None for g in r["groups"])
    res = invoke("report", rep, "-o", page)
    assert res.exit_code == 0, res.output
    html = page.read_text()
    # loss curves, MACs per layer, and the latency of each group's cut (round_to=auto measured them)
    assert html.count("data:image/png;base64,") == 3 and "frozen" in html and "round-to auto" in html
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    res = invoke("report", bad, "-o", tmp_path / "x.html")
    assert res.exit_code == 2 and not (tmp_path / "x.html").exists()


def test_image_folder_calibration(tmp_path):
    """A folder of images feeds a single-input model through the preprocessing preset."""
    from onnx import numpy_helper
    from PIL import Image
    rng = np.random.default_rng(0)
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(12):
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    w1 = numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((4, 8, 1, 1)).astype(np.float32), "w2")
    g = helper.make_graph([helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1] * 4),
                           helper.make_node("Relu", ["a"], ["r"]), helper.make_node("Conv", ["r", "w2"], ["y"])],
                          "img", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 32, 32])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 32, 32])], [w1, w2])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "m.onnx")
    for preset in ("none", "imagenet"):
        res = invoke("prune", tmp_path / "m.onnx", "-o", tmp_path / f"o_{preset}.onnx", "--calib", folder,
                     "--preprocess", preset, "--keep-ratio", "0.5", "-q")
        assert res.exit_code == 0, res.output
        load_in_ort(tmp_path / f"o_{preset}.onnx")
    from onnxprune.calibration import load_calibration
    cal = load_calibration(folder, onnx.load(tmp_path / "m.onnx"), preprocess="imagenet")
    batch = next(b for _, b in cal.batches(12))["x"]
    assert batch.shape == (12, 3, 32, 32) and batch.dtype == np.float32 and batch.min() < 0
    from onnxprune.calibration.npy_stream import NpyStream as _NpyStream
    assert all(isinstance(v, _NpyStream) for p in cal.parts for v in p.arrays.values()), \
        "images are decoded once to disk and streamed, not held in memory"


def _long_named_chain(path, layers=6, name_len=30_000):
    """A Conv chain whose node names are long, so that `analyze --json` prints more than a pipe holds."""
    from onnx import numpy_helper
    rng = np.random.default_rng(0)
    nodes, inits, x = [], [], "x"
    for i in range(layers):
        inits.append(numpy_helper.from_array(rng.standard_normal((4, 4, 1, 1)).astype(np.float32), f"w{i}"))
        nodes += [helper.make_node("Conv", [x, f"w{i}"], [f"c{i}"], name=f"{i}" + "c" * name_len),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"relu{i}")]
        x = f"r{i}"
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["y"]))
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 1, 1])], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_closed_standard_output_ends_quietly(tmp_path):
    """Issue 16, item 14: `onnxprune analyze M | head -c 10` closes the pipe early: exit 1 and no message (it
    was `onnxprune: error: : Broken pipe`, exit 2), no traceback."""
    import subprocess
    import sys
    model = _long_named_chain(tmp_path / "m.onnx")
    proc = subprocess.Popen([sys.executable, "-m", "onnxprune", "analyze", str(model)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.read(10) == str(model).encode()[:10]
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 1
    assert err == "", err


def test_report_page_escapes_every_value_from_the_report(tmp_path):
    """Issue 16, item 19: node names come from untrusted models. A model whose unknown-op node (it freezes a
    group, so its name is in a reason) and Conv (a producer) are named `<script>...`, and a report whose
    strings are all markup: the page holds no tag from them, only their escaped text."""
    from onnx import numpy_helper
    evil = "<script>alert(1)</script>"
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
             for n, s in (("w1", (8, 3, 3, 3)), ("w2", (8, 8, 3, 3)), ("w3", (4, 8, 1, 1)))]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1] * 4, name=evil + "conv"),
             helper.make_node("Softmax", ["a"], ["s"], axis=1, name=evil),  # over channels: freezes, naming it
             helper.make_node("Conv", ["s", "w2"], ["b"], pads=[1] * 4, name="c2"),
             helper.make_node("Relu", ["b"], ["r"]), helper.make_node("Conv", ["r", "w3"], ["y"], name="c3")]
    g = helper.make_graph(nodes, "evil", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8, 8])], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "evil.onnx")
    rep, page = tmp_path / "r.json", tmp_path / "r.html"
    res = invoke("prune", tmp_path / "evil.onnx", "-o", tmp_path / "o.onnx", "--method", "magnitude", "--keep-ratio",
                 "0.5", "--report", rep)
    assert res.exit_code == 0, res.output
    load_in_ort(tmp_path / "o.onnx")
    data = json.loads(rep.read_text())
    assert any(evil in r for g in data["groups"] for r in g["reasons"]), "the hostile name reaches the report"
    data.update(model=evil, method=evil, refit=evil, allocate=evil, target={evil: 0.5}, macs_unknown=[evil])
    for g in data["groups"]:
        g.update(note=evil, method=evil if not g["frozen"] else None)
    rep.write_text(json.dumps(data))
    res = invoke("report", rep, "-o", page)
    assert res.exit_code == 0, res.output
    text = page.read_text()
    assert "<script" not in text.lower() and "alert(1)</" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    # fields the page shows as numbers: markup there is refused (it was written raw into the page)
    for field, where in (("calibration_samples", data), ("id", data["groups"][0]), ("kept_count", data["groups"][0])):
        old = where[field]
        where[field] = evil
        rep.write_text(json.dumps(data))
        page.unlink(missing_ok=True)
        res = invoke("report", rep, "-o", page)
        assert res.exit_code == 2 and field in res.stderr and not page.exists(), (field, res.stderr)
        where[field] = old


def test_eval_streams_its_data(model_path, tmp_path, monkeypatch):
    """Issue 16, item 16: `eval` reads its .npz batch by batch, as calibration does (it loaded data files
    whole: 2.5 GB for a member that deflates to 2 GB), and gets the metrics of the whole-array computation."""
    from onnxprune.calibration import npy_stream
    from onnxprune.report.evaluate import output_metrics
    rng = np.random.default_rng(0)
    x = rng.standard_normal((100, 3, 16, 16)).astype(np.float32)
    labels = np.arange(100) % 10
    data = tmp_path / "d.npz"
    np.savez_compressed(data, input=x, labels=labels)
    out = tmp_path / "p.onnx"
    assert invoke("prune", model_path, "-o", out, "--method", "magnitude", "--keep-ratio", "0.5").exit_code == 0
    largest = []
    blocks = npy_stream.NpyStream.blocks

    def spy(self, rows, first=0, last=None):
        for block in blocks(self, rows, first, last):
            largest.append(len(block) * block[0].nbytes)
            yield block
    monkeypatch.setattr(npy_stream.NpyStream, "blocks", spy)
    res = invoke("eval", model_path, out, "--data", data, "--json", "--batch-size", "16")
    assert res.exit_code == 0, res.output
    assert max(largest) <= 16 * x[0].nbytes, "no read larger than a batch"
    want = output_metrics(run_file(model_path, {"input": x})[0], run_file(out, {"input": x})[0], labels)
    got = json.loads(res.stdout)
    assert (got.pop("metric"), "comes from" in got.pop("metric_reason")) == ("classification", True)
    assert got == pytest.approx(want, rel=1e-6, abs=1e-9)
