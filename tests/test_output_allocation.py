"""Output-aware allocation (issue 13): each group's output loss at its candidate widths, measured through the
twin from a state shared by all groups, equals the KL recomputed here in ONNX Runtime on the masked
reference of that group alone; the interpolated curves and the allocation that uses them."""
import numpy as np
import onnx
import pytest
import zoo
from helpers import run

from onnxprune import apply_selection, prune
from onnxprune.analysis import Analysis
from onnxprune.calibration import load_calibration
from onnxprune.options import PruneOptions
from onnxprune.pipeline import GreedyPruner
from onnxprune.pipeline.sensitivity import candidate_widths, interpolate, output_trials


def _log_softmax(z):
    z = z.reshape(len(z), -1).astype(np.float64)
    z = z - z.max(1, keepdims=True)
    return z - np.log(np.exp(z).sum(1, keepdims=True))


@pytest.mark.parametrize("name,refit", [("mbv3_se", "full"), ("basic_res", "gamma"), ("concat", "full")])
def test_output_losses_equal_brute_force(zoo_models, name, refit):
    z = next(z for z in zoo_models if z.name == name and z.exporter == "ts17")
    x = zoo.random_input(z, 40, 1)["input"]
    a = Analysis(onnx.load(z.path))
    cal = load_calibration({"input": x}, a.model, holdout=0.25)
    pruner = GreedyPruner(a, cal, PruneOptions.from_flat(flops=0.5, refit=refit, batch_size=8))
    trials = output_trials(pruner)
    held = x[cal.n_calib:]
    ref = _log_softmax(run(a.model, {"input": held})[0])
    assert trials and all(len(t) >= 2 for t in trials.values())
    for gid, group_trials in trials.items():
        g = a.groups[gid]
        assert [n for n, _, _ in group_trials] == candidate_widths(g, 1, 1)
        for n, sel, value in group_trials:
            assert set(sel.kept) == {gid} and len(sel.kept[gid]) == n
            out = _log_softmax(run(apply_selection(a, sel, masked=True), {"input": held})[0])
            kl = float((np.exp(ref) * (ref - out)).sum(1).mean())
            assert value == pytest.approx(kl, rel=1e-3, abs=1e-7), (gid, n)


def test_interpolated_curve_passes_the_points_and_never_rises():
    curve = interpolate(16, [2, 4, 8, 12], [0.5, 0.2, 0.25, 0.01])
    assert len(curve) == 17 and curve[16] == 0.0
    assert curve[2] == pytest.approx(0.5) and curve[12] == pytest.approx(0.01)
    assert curve[4] == pytest.approx(0.25), "a rise towards more channels is flattened (never lower with fewer)"
    assert np.all(np.diff(curve) <= 1e-12)
    assert curve[0] >= curve[2]


def test_output_allocation_reaches_the_target_and_differs_from_uniform(zoo_models):
    z = next(z for z in zoo_models if z.name == "mbv3_se" and z.exporter == "ts17")
    x = zoo.random_input(z, 48, 3)["input"]
    _, rep = prune(str(z.path), {"input": x}, flops=0.5, allocate="output", batch_size=16)
    _, uni = prune(str(z.path), {"input": x}, flops=0.5, allocate="uniform", batch_size=16)
    assert abs(rep.macs_ratio - 0.5) <= 0.02 * 0.5 + 1e-9
    assert rep.allocate == "output"
    assert [g.kept_count for g in rep.groups] != [g.kept_count for g in uni.groups]


def test_interpolated_curve_below_the_smallest_measured_width_costs_more_than_anything_measured():
    curve = interpolate(256, [32, 64, 128, 192], [0.0019, 0.0005, 0.0001, 0.0])
    assert curve[32] == pytest.approx(0.0019)
    # one channel fewer than measured costs more than going from the full width to the smallest measured one
    assert curve[31] - curve[32] > curve[32] - curve[256]
    assert np.all(np.diff(curve) <= 1e-12)


def test_output_allocation_never_goes_below_a_measured_width_while_others_can_give(zoo_models):
    """The Fashion-MNIST collapse (allocate=output at 30% MACs): a group whose output loss is tiny at every
    measured width was taken far below the smallest one, to a single channel. With curves built from
    measurements at the candidate widths, every group keeps at least its smallest measured width when the
    target is reachable that way."""
    from onnxprune.analysis.cost_model import macs_model
    from onnxprune.selection.allocation import allocate_by_loss
    z = next(z for z in zoo_models if z.name == "mbv3_se" and z.exporter == "ts17")
    a = Analysis(onnx.load(z.path))
    model = macs_model(a)
    groups = [a.groups[g] for g in model.gids]
    quiet = max((g for g in groups if g.channels >= 16), key=lambda g: g.channels)
    curves, smallest = {}, {}
    for g in groups:
        widths = candidate_widths(g, 1, 1)
        scale = 1e-4 if g.id == quiet.id else 1.0
        curves[g.id] = interpolate(g.channels, widths, [scale * (1 - n / g.channels) ** 2 for n in widths])
        smallest[g.id] = widths[0]
    floor = {g.id: smallest[g.id] for g in groups}
    fraction = 0.3
    assert model(model.vector(floor)) < fraction * model.total, "the test needs a target reachable above the floor"
    counts = allocate_by_loss(model, curves, fraction, 1, 1, {})
    assert abs(model(model.vector(counts)) / model.total - fraction) <= 0.02 * fraction
    assert counts[quiet.id] >= smallest[quiet.id], (counts[quiet.id], smallest[quiet.id], quiet.channels)
    assert all(counts[g] >= smallest[g] for g in counts)


def test_joint_loss_of_a_stand_in_equals_brute_force_and_the_lowest_is_chosen(zoo_models):
    """The stand-in of a whole allocation (every group pruned at once with its decision on the original
    network): its output loss through the twin equals the KL recomputed in ONNX Runtime on its masked
    reference; the pruned run records the three stand-ins' losses and keeps the lowest."""
    from onnxprune.pipeline.sensitivity import Sensitivity
    from onnxprune.selection import counts_for_ratio
    z = next(z for z in zoo_models if z.name == "mbv3_se" and z.exporter == "ts17")
    x = zoo.random_input(z, 40, 1)["input"]
    a = Analysis(onnx.load(z.path))
    cal = load_calibration({"input": x}, a.model, holdout=0.25)
    pruner = GreedyPruner(a, cal, PruneOptions.from_flat(flops=0.5, refit="full", batch_size=8))
    sens = Sensitivity(pruner)
    counts = counts_for_ratio(a, 0.6, 1, 1)
    sel = sens.stand_in(counts)
    assert {g: len(k) for g, k in sel.kept.items()} == {g: n for g, n in counts.items()
                                                       if g in sens.groups and n < a.groups[g].channels}
    held = x[cal.n_calib:]
    ref = _log_softmax(run(a.model, {"input": held})[0])
    out = _log_softmax(run(apply_selection(a, sel, masked=True), {"input": held})[0])
    kl = float((np.exp(ref) * (ref - out)).sum(1).mean())
    assert sens.joint_loss(counts) == pytest.approx(kl, rel=1e-3, abs=1e-7)

    _, rep = prune(str(z.path), {"input": x}, flops=0.5, allocate="output", batch_size=16)
    losses = rep.allocation["held_out_output_loss"]
    assert set(losses) == {"uniform", "halfway", "output"}
    assert rep.allocation["chosen"] == min(losses, key=losses.get)
    assert f"allocation {rep.allocation['chosen']} chosen (held-out output loss uniform {losses['uniform']:.4g}" \
        in rep.summary()


def test_output_allocation_composes_with_a_latency_target(zoo_models, monkeypatch, tmp_path):
    """allocate=output with the latency stage's cost model and fast widths: the curves are measured once, the
    stand-ins (the halfway one snapped to the allowed widths) are compared, and the pruned model's cost under
    the timer, recomputed here, is the target within the stage's 5%."""
    from onnxprune.latency import FakeTimer, feeds
    monkeypatch.setenv("ONNXPRUNE_TIMER", "fake:slow=2")
    monkeypatch.setenv("ONNXPRUNE_CACHE_DIR", str(tmp_path / "cache"))
    z = next(z for z in zoo_models if z.name == "inverted_res" and z.exporter == "ts17")
    cal = zoo.random_input(z, 40, 3)
    pruned, report = prune(str(z.path), cal, latency=0.6, allocate="output", batch_size=16)
    a = Analysis(onnx.load(z.path))
    feed = feeds(a.model, 1, cal)
    ratio = FakeTimer().cost(pruned, feed) / FakeTimer().cost(a.model, feed)
    assert abs(ratio / 0.6 - 1) <= 0.05, ratio
    assert report.allocation["chosen"] == min(report.allocation["held_out_output_loss"],
                                              key=report.allocation["held_out_output_loss"].get)
    fast = {int(g): v["fast"] for g, v in report.latency["groups"].items()}
    assert all(g.kept_count in fast[g.id] for g in report.groups if not g.frozen and g.id in fast)


def test_auto_allocation_is_output_with_data_and_uniform_without(zoo_models):
    """The default allocation (auto) is the output-aware one with calibration data, the same counts as asking for
    it, and uniform without data (magnitude needs none)."""
    z = next(z for z in zoo_models if z.name == "mbv3_se" and z.exporter == "ts17")
    x = {"input": zoo.random_input(z, 48, 3)["input"]}
    _, auto = prune(str(z.path), x, flops=0.5, batch_size=16, round_to=1)
    _, out = prune(str(z.path), x, flops=0.5, batch_size=16, round_to=1, allocate="output")
    assert auto.allocate == "output" and auto.allocation
    assert auto.allocation["chosen"] in ("uniform", "halfway", "output")
    assert [g.kept_count for g in auto.groups] == [g.kept_count for g in out.groups]
    assert "allocation " in auto.summary()
    _, nodata = prune(str(z.path), method="magnitude", flops=0.5, round_to=1)
    _, uni = prune(str(z.path), method="magnitude", flops=0.5, round_to=1, allocate="uniform")
    assert nodata.allocate == "uniform" and nodata.allocation is None
    assert [g.kept_count for g in nodata.groups] == [g.kept_count for g in uni.groups]
    _, keep = prune(str(z.path), x, keep_ratio=0.5, batch_size=16, round_to=1)
    assert keep.allocate == "uniform", "a keep ratio allocates nothing"


@pytest.mark.parametrize("tail,why", [("shrink", "Shrink"), ("resize", "antialias")])
def test_auto_allocation_without_a_twin_is_uniform_and_says_why(tmp_path, tail, why):
    """auto on a model the twin cannot run (an unknown op, or an op setting it refuses only when it runs):
    uniform, named in the report and its summary; asking for output explicitly is a one-line error naming it."""
    from onnxprune.errors import UserError
    path, cal = zoo.twin_unknown_op_model(tmp_path, tail)
    pruned, rep = prune(str(path), cal, flops=0.5, round_to=1)
    _, uni = prune(str(path), cal, flops=0.5, round_to=1, allocate="uniform")
    assert rep.allocate == "uniform" and rep.allocation is not None
    assert why in rep.allocation["output_unavailable"] and why in rep.summary()
    assert [g.kept_count for g in rep.groups] == [g.kept_count for g in uni.groups]
    out = tmp_path / "p.onnx"
    onnx.save(pruned, out)
    assert run(onnx.load(out), {"x": cal["x"][:2]})[0].shape[:2] == (2, 4)
    with pytest.raises(UserError, match=f"allocate='output'.*{why}.*--allocate uniform"):
        prune(str(path), cal, flops=0.5, round_to=1, allocate="output")


def test_output_allocation_refuses_a_twin_that_disagrees_with_onnx_runtime(zoo_models, monkeypatch):
    """A twin that computes something else than ONNX Runtime on the model (here its Relu made to leak) would
    steer the allocation (or a global method) by a wrong loss: explicit output and the global methods are
    refused, auto allocates uniformly and says why."""
    from onnxprune.errors import UserError
    z = next(z for z in zoo_models if z.name == "mbv3_se" and z.exporter == "ts17")
    x = {"input": zoo.random_input(z, 32, 3)["input"]}
    zoo.leak_twin_relu(monkeypatch)
    with pytest.raises(UserError, match="differ from ONNX Runtime"):
        prune(str(z.path), x, flops=0.5, batch_size=16, round_to=1, allocate="output")
    _, rep = prune(str(z.path), x, flops=0.5, batch_size=16, round_to=1)
    assert rep.allocate == "uniform" and "differ from ONNX Runtime" in rep.allocation["output_unavailable"]
    with pytest.raises(UserError, match="method='greedy-taylor'.*differ from ONNX Runtime"):  # global methods too
        prune(str(z.path), x, flops=0.5, batch_size=16, round_to=1, method="greedy-taylor", allocate="uniform")


def test_auto_allocation_falls_back_on_any_twin_failure_and_explicit_output_does_not(zoo_models, monkeypatch):
    """auto is the default, so a failure of the twin on a model (here an op made to raise) must not stop the run:
    uniform, with the failure in the report; an explicit --allocate output lets it through."""
    from onnxprune.twin import ops

    def broken(s, ins):
        raise RuntimeError("broken on purpose")
    z = next(z for z in zoo_models if z.name == "mbv3_se" and z.exporter == "ts17")
    x = {"input": zoo.random_input(z, 32, 3)["input"]}
    monkeypatch.setitem(ops._REGISTRY, ("", "Relu"), broken)
    _, rep = prune(str(z.path), x, flops=0.5, batch_size=16, round_to=1)
    assert rep.allocate == "uniform"
    assert rep.allocation == {"chosen": "uniform", "output_unavailable": "RuntimeError: broken on purpose"}
    assert abs(rep.macs_ratio - 0.5) <= 0.02 * 0.5 + 1e-9
    with pytest.raises(RuntimeError, match="broken on purpose"):
        prune(str(z.path), x, flops=0.5, batch_size=16, round_to=1, allocate="output")


def test_stand_ins_reuse_the_trials_decisions_at_measured_widths(zoo_models, monkeypatch):
    """A stand-in whose counts are all measured widths re-fits nothing new, and its loss is the one computed
    from fresh re-fits; after forget() the decisions are computed again."""
    import onnxprune.pipeline.sensitivity as sensitivity
    z = next(z for z in zoo_models if z.name == "mbv3_se" and z.exporter == "ts17")
    x = zoo.random_input(z, 40, 1)["input"]
    a = Analysis(onnx.load(z.path))
    cal = load_calibration({"input": x}, a.model, holdout=0.25)
    pruner = GreedyPruner(a, cal, PruneOptions.from_flat(flops=0.5, refit="full", batch_size=8))
    calls = []
    real = sensitivity.apply_refit
    monkeypatch.setattr(sensitivity, "apply_refit", lambda *args, **kw: calls.append(1) or real(*args, **kw))
    sens = sensitivity.Sensitivity(pruner)
    trials = sens.trials()
    n_trials = len(calls)
    assert n_trials == sum(len(t) for t in trials.values())
    counts = {gid: t[1][0] for gid, t in trials.items()}   # every group at its second measured width
    cached = sens.joint_loss(counts)
    assert len(calls) == n_trials, "the stand-in re-fitted a decision the trials had made"
    sens.forget()
    fresh = sens.joint_loss(counts)
    assert len(calls) == n_trials + len(counts)
    assert cached == pytest.approx(fresh, rel=1e-9, abs=1e-12)


def test_output_curves_choose_each_consumers_ridge_once_per_group(zoo_models, monkeypatch):
    """The trials' full re-fits choose a consumer's ridge strength on the held-out split once per group, at the
    candidate width nearest half the group, and re-fit the other widths with that strength alone: one solve per
    consumer and width after the first, the grid's size at the first. The strength kept is the one a re-fit
    with the whole grid chooses at that width."""
    import onnxprune.pipeline.refit as refit
    import onnxprune.pipeline.sensitivity as sensitivity
    z = next(z for z in zoo_models if z.name == "mbv3_se" and z.exporter == "ts17")
    x = zoo.random_input(z, 40, 1)["input"]
    a = Analysis(onnx.load(z.path))
    cal = load_calibration({"input": x}, a.model, holdout=0.25)
    pruner = GreedyPruner(a, cal, PruneOptions.from_flat(flops=0.5, refit="full", batch_size=8))
    solves: list[float] = []
    real = refit.ridge_refit
    monkeypatch.setattr(refit, "ridge_refit", lambda st, f, lam, *args, **kw: solves.append(lam) or
                        real(st, f, lam, *args, **kw))
    sens = sensitivity.Sensitivity(pruner)
    trials = sens.trials()
    expected = sum(len(sens.groups[gid]) * (len(refit.RIDGE_GRID) + len(t) - 1) for gid, t in trials.items())
    assert len(solves) == expected
    for gid, t in trials.items():
        g = a.groups[gid]
        first = min((n for n, _, _ in t), key=lambda n: abs(n - g.channels / 2))
        p = sens.problems[gid]
        idx = sensitivity._kept(pruner, g, sens.orders[gid], first)
        whole_grid = refit.apply_refit(a, sensitivity.Selection(), {}, p, idx, np.ones(len(idx)), pruner.refit,
                                       pruner.options.refit.ridge)
        assert sens.ridges[gid] == whole_grid.ridge and set(whole_grid.ridge) == {c.name for c in sens.groups[gid]}


def test_the_sequential_pass_runs_without_the_output_allocations_statistics(zoo_models, monkeypatch):
    """The output-aware allocation's statistics and decisions on the original network are dropped once the counts
    are final: no group of the sequential pass sees them in memory beside its own."""
    import onnxprune.pipeline.sensitivity as sensitivity
    z = next(z for z in zoo_models if z.name == "mbv3_se" and z.exporter == "ts17")
    x = {"input": zoo.random_input(z, 32, 3)["input"]}
    built, alive = [], []
    real_init, real_group = sensitivity.Sensitivity.__init__, GreedyPruner._prune_group

    def init(self, pruner):
        built.append(1)
        real_init(self, pruner)

    def group(self, g, k):
        alive.append(hasattr(self, "_sensitivity"))
        real_group(self, g, k)
    monkeypatch.setattr(sensitivity.Sensitivity, "__init__", init)
    monkeypatch.setattr(GreedyPruner, "_prune_group", group)
    _, rep = prune(str(z.path), x, flops=0.5, batch_size=16, round_to=1)
    assert rep.allocate == "output" and built == [1]
    assert alive and not any(alive)
