"""The masked-reference oracle (docs/DESIGN.md, invariants 1-3) on every zoo model, exporter and several
random selections with random γ."""
import numpy as np
import onnx
import pytest
import zoo
from helpers import rel_err, run

from onnxprune import load_model
from onnxprune.analysis import Analysis
from onnxprune.analysis.cost import macs, model_macs
from onnxprune.graph.params import count_params
from onnxprune.rewrite import Rewriter
from onnxprune.selection import Selection, counts_for_ratio, select

CASES = [(name, exp) for name, _ in zoo.zoo_models() for exp in zoo.EXPORTERS]


@pytest.fixture(scope="module")
def zoo_by_key(zoo_models):
    return {(z.name, z.exporter): z for z in zoo_models}


def _get(zoo_by_key, name, exp):
    if (name, exp) not in zoo_by_key:
        pytest.skip(f"export failed: {zoo.EXPORT_FAILURES.get((name, exp))}")
    z = zoo_by_key[(name, exp)]
    return z, load_model(z.path)


@pytest.mark.parametrize("name,exp", CASES)
def test_pruned_equals_masked_reference(zoo_by_key, name, exp):
    z, model = _get(zoo_by_key, name, exp)
    a = Analysis(model)
    assert a.prunable, "every zoo model has something to prune"
    base_macs, base_params = macs(a), count_params(a.model)
    for seed in range(3):
        ratio = (0.3, 0.5, 0.8)[seed]
        sel = select(a, counts_for_ratio(a, ratio), "random", seed=seed, random_gamma=True)
        keep, gamma = sel.class_arrays(a)
        pruned = Rewriter(a, keep, gamma).run()
        masked = Rewriter(a, keep, gamma, masked=True).run()
        onnx.checker.check_model(pruned, full_check=True)
        for batch in (1, 3):
            feeds = zoo.random_input(z, batch, seed)
            assert rel_err(run(pruned, feeds), run(masked, feeds)) <= 1e-4
        assert macs(a, keep) < base_macs
        assert model_macs(pruned) == macs(a, keep) or abs(model_macs(pruned) - macs(a, keep)) <= 1e-6 * base_macs
        assert count_params(pruned) < base_params
        _check_interface(model, pruned)


@pytest.mark.parametrize("name,exp", CASES)
def test_keep_all_is_identity(zoo_by_key, name, exp):
    z, model = _get(zoo_by_key, name, exp)
    a = Analysis(model)
    sel = Selection({g.id: np.arange(g.channels) for g in a.prunable},
                    {g.id: np.ones(g.channels) for g in a.prunable})
    keep, gamma = sel.class_arrays(a)
    pruned = Rewriter(a, keep, gamma).run()
    feeds = zoo.random_input(z, 3, 0)
    assert rel_err(run(pruned, feeds), run(model, feeds)) <= 1e-5
    assert macs(a, keep) == macs(a)


def _check_interface(original: onnx.ModelProto, pruned: onnx.ModelProto):
    """Names, dtypes and (symbolic) shapes of inputs and outputs, opset and ir_version are kept."""
    def sig(vis):
        return [(v.name, v.type.tensor_type.elem_type,
                 [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]) for v in vis]
    assert sig(pruned.graph.input) == sig(original.graph.input)
    assert sig(pruned.graph.output) == sig(original.graph.output)
    assert list(pruned.opset_import) == list(original.opset_import)
    assert pruned.ir_version == original.ir_version
    assert pruned.producer_name == original.producer_name


def test_random_selection_breaks_equivalence_when_rewriter_is_wrong(zoo_by_key):
    """The oracle can fail: a masked reference with the wrong γ differs from the pruned graph."""
    z, model = _get(zoo_by_key, "basic_res", "ts17")
    a = Analysis(model)
    sel = select(a, counts_for_ratio(a, 0.5), "random", seed=1, random_gamma=True)
    keep, gamma = sel.class_arrays(a)
    pruned = Rewriter(a, keep, gamma).run()
    masked = Rewriter(a, keep, np.ones_like(gamma), masked=True).run()
    feeds = zoo.random_input(z, 2, 0)
    assert rel_err(run(pruned, feeds), run(masked, feeds)) > 1e-3


@pytest.mark.parametrize("name", [name for name, _ in zoo.zoo_models()])
def test_newest_supported_opset_analyses_and_prunes_as_the_export_does(zoo_by_key, tmp_path, name):
    """Each zoo model raised by ONNX's version converter to opset 25 (the newest supported) has the same
    groups (sizes, frozen) as its export and prunes exactly: the handlers do not depend on opsets 22-25's new
    versions of their ops (tensor types added)."""
    import onnx.version_converter
    newest_opset = 25
    exp = zoo.EXPORTERS[0]
    z, model = _get(zoo_by_key, name, exp)
    newest = onnx.version_converter.convert_version(onnx.load(str(z.path)), newest_opset)
    onnx.save(newest, str(tmp_path / "newest.onnx"))
    a, b = Analysis(model), Analysis(load_model(tmp_path / "newest.onnx"))
    assert [(g.channels, g.frozen) for g in b.groups] == [(g.channels, g.frozen) for g in a.groups]
    sel = select(b, counts_for_ratio(b, 0.5), "random", seed=0, random_gamma=True)
    keep, gamma = sel.class_arrays(b)
    pruned, masked = Rewriter(b, keep, gamma).run(), Rewriter(b, keep, gamma, masked=True).run()
    assert {i.domain: i.version for i in pruned.opset_import}[""] == newest_opset
    feeds = zoo.random_input(z, 3, 0)
    assert rel_err(run(pruned, feeds), run(masked, feeds)) <= 1e-4
