"""Loading and saving: external data both ways, refusal of escaping locations, atomic writes."""
import shutil

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from helpers import rel_err, run

from onnxprune.cli import main
from onnxprune.errors import UserError
from onnxprune.graph import load_model, path_uses_external_data, save_model


def _dynamo(zoo_models):
    return next(z for z in zoo_models if z.name == "basic_res" and z.exporter == "dynamo18")


def test_external_data_model_prunes_and_saves_with_external_data(zoo_models, tmp_path):
    z = _dynamo(zoo_models)
    assert path_uses_external_data(z.path)
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(z.path, src / z.path.name)
    shutil.copy(str(z.path) + ".data", src / (z.path.name + ".data"))
    out = tmp_path / "out" / "pruned.onnx"
    out.parent.mkdir()
    res = CliRunner().invoke(main, ["prune", str(src / z.path.name), "-o", str(out), "--method", "magnitude",
                                    "--keep-ratio", "0.5"])
    assert res.exit_code == 0, res.output
    assert (out.parent / "pruned.onnx.data").is_file() and path_uses_external_data(out)
    m = load_model(out)
    feeds = {"input": np.ones((1, 3, 16, 16), np.float32)}
    assert run(m, feeds)[0].shape == (1, 10)


@pytest.mark.parametrize("location", ["../../etc/passwd", "/etc/passwd"])
def test_external_data_escaping_the_folder_is_refused(zoo_models, tmp_path, location):
    z = _dynamo(zoo_models)
    m = onnx.load(str(z.path), load_external_data=False)
    t = next(t for t in m.graph.initializer if t.external_data)
    for e in t.external_data:
        if e.key == "location":
            e.value = location
    bad = tmp_path / "bad.onnx"
    onnx.save(m, str(bad))
    with pytest.raises(UserError, match="location"):
        load_model(bad)


def test_save_is_atomic_and_roundtrips(zoo_models, tmp_path):
    z = next(z for z in zoo_models if z.name == "chain" and z.exporter == "ts17")
    m = load_model(z.path)
    out = tmp_path / "m.onnx"
    save_model(m, out)
    save_model(m, tmp_path / "ext.onnx", external_data=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ext.onnx", "ext.onnx.data", "m.onnx"]
    feeds = {"input": np.ones((2, 3, 16, 16), np.float32)}
    assert rel_err(run(load_model(out), feeds), run(m, feeds)) == 0
    assert rel_err(run(load_model(tmp_path / "ext.onnx"), feeds), run(m, feeds)) == 0
