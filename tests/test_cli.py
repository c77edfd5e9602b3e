"""The command line: outputs, report fields, and the bad-input matrix (exit 2, one line, no file)."""
import json
import shutil

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from helpers import load_in_ort, rel_err, run_file
from onnx import TensorProto, helper

from onnxprune.cli import main


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
    assert abs(r["macs_after"] / r["macs_before"] - 0.5) <= 0.02 * 0.5 + 0.02
    assert r["params_after"] < r["params_before"]
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
    assert 0 <= r["agreement"] <= 1 and r["kl"] >= 0 and r["accuracy_original"] is not None
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
}


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
    assert html.count("data:image/png;base64,") == 2 and "frozen" in html
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
