"""Calibration batches: every split of every source gives exactly its rows, with their sample indices,
whatever the batch size, and the held-out rows are reached without reading the rows before them."""
import numpy as np
import pytest
from onnx import TensorProto, helper

from onnxprune.calibration import load_calibration


def _model():
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "m",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _sources(tmp_path, x):
    np.savez(tmp_path / "c.npz", x=x)
    np.save(tmp_path / "c.npy", x)
    (tmp_path / "parts").mkdir()
    for i, (a, b) in enumerate(((0, 7), (7, 30), (30, len(x)))):   # three files, splits cut across them
        np.save(tmp_path / "parts" / f"{i}.npy", x[a:b])
    return {"npz": tmp_path / "c.npz", "npy": tmp_path / "c.npy", "folder": tmp_path / "parts", "dict": {"x": x},
            "iterable": [{"x": x[i:i + 5]} for i in range(0, len(x), 5)]}


@pytest.mark.parametrize("batch", [1, 4, 16, 100])
def test_splits_hold_their_rows_with_their_indices(tmp_path, batch):
    x = np.arange(41 * 3, dtype=np.float32).reshape(41, 3)
    for name, src in _sources(tmp_path, x).items():
        cal = load_calibration(src, _model(), holdout=0.25)
        for split, rows in (("all", x), ("calib", x[:cal.n_calib]), ("holdout", x[cal.n_calib:])):
            got = list(cal.batches(batch, split))
            assert all(len(b["x"]) <= batch for _, b in got), name
            assert np.array_equal(np.concatenate([b["x"] for _, b in got]), rows), (name, split)
            for first, b in got:  # each batch's first index is its first sample's index in the source
                assert np.array_equal(b["x"][0], x[first]), (name, split)


def test_held_out_rows_are_reached_by_seeking(tmp_path, monkeypatch):
    """The rows before the held-out split are skipped, never read (a pass over held-out data costs what
    it holds, not the whole file)."""
    x = np.random.default_rng(0).standard_normal((400, 3)).astype(np.float32)
    np.save(tmp_path / "c.npy", x)
    cal = load_calibration(tmp_path / "c.npy", _model(), holdout=0.1)
    read = []
    real_open = open

    class Counting:
        def __init__(self, fh):
            self.fh = fh

        def read(self, n=-1):
            data = self.fh.read(n)
            read.append(len(data))
            return data

        def __getattr__(self, name):
            return getattr(self.fh, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

    stream = cal.parts[0].arrays["x"]
    monkeypatch.setattr(stream, "opener", lambda: Counting(real_open(tmp_path / "c.npy", "rb")))
    rows = np.concatenate([b["x"] for _, b in cal.batches(8, "holdout")])
    assert np.array_equal(rows, x[cal.n_calib:])
    assert sum(read) < 2 * 40 * 3 * 4 + 1024, "only the header and the held-out rows are read"
