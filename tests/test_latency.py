"""The latency stage (docs/DESIGN.md, "Latency"): tables, the latency cost model, fast widths, latency targets,
the never-slower check of the default path, and `onnxprune bench`. Every timing comes from the fake timer
(`onnxprune.latency.runtime.FakeTimer`), whose per-width costs are known: no test depends on the speed of
the machine."""
import itertools
import json
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

import onnxprune
from onnxprune.cli import main
from onnxprune.latency import FakeTimer, LatencyModel, Runtime, build_table, feeds
from onnxprune.latency.subgraph import variant
from onnxprune.latency.widths import NOT_PAYING_MARGIN, ROUNDINGS, choose, probe_widths, rounded
from onnxprune.options import OptionError
from onnxprune.selection.allocation import allocate_by_loss


def _conv(name, x, cin, cout, k, rng, group=1):
    w = numpy_helper.from_array((rng.standard_normal((cout, cin // group, k, k)) * 0.2).astype(np.float32), name + ".w")
    b = numpy_helper.from_array(np.zeros(cout, np.float32), name + ".b")
    node = helper.make_node("Conv", [x, w.name, b.name], [name], name=name, kernel_shape=[k, k],
                            pads=[k // 2] * 4, group=group)
    return node, [w, b]


def inverted_residual(path, a=32, b=48, c=40, size=16):
    """x -> Conv(3->a) -> Relu -> Conv(a->b) -> Relu -> depthwise(b) -> Relu -> Conv(b->a) -> + -> Conv(a->c)
    -> Relu -> GAP -> Flatten -> Gemm(c->10): three groups (a: two producers joined by the Add; b; c), and
    no node touches more than two."""
    rng = np.random.default_rng(0)
    nodes, inits = [], []
    for name, x, cin, cout, k, group, act in [("c1", "x", 3, a, 3, 1, "r1"), ("c2", "r1", a, b, 1, 1, "r2"),
                                              ("dw", "r2", b, b, 3, b, "r3"), ("c4", "r3", b, a, 1, 1, None),
                                              ("c5", "s", a, c, 1, 1, "r5")]:
        if name == "c5":
            nodes.append(helper.make_node("Add", ["c4", "r1"], ["s"], name="add"))
        node, weights = _conv(name, x, cin, cout, k, rng, group)
        nodes.append(node)
        inits += weights
        if act:
            nodes.append(helper.make_node("Relu", [name], [act], name="relu_" + name))
    fc = numpy_helper.from_array((rng.standard_normal((10, c)) * 0.2).astype(np.float32), "fc.w")
    inits += [fc, numpy_helper.from_array(np.zeros(10, np.float32), "fc.b")]
    nodes += [helper.make_node("GlobalAveragePool", ["r5"], ["gap"], name="gap"),
              helper.make_node("Flatten", ["gap"], ["flat"], name="flat", axis=1),
              helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["y"], name="fc", transB=1)]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, size, size])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])
    model = helper.make_model(helper.make_graph(nodes, "ir", [x], [y], inits),
                              opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


@pytest.fixture
def ir_path(tmp_path):
    return inverted_residual(tmp_path / "ir.onnx")


def _f(w, slow=2.0):
    """The fake timer's cost factor of one channel dimension of width w."""
    return w * (1.0 if w % 8 == 0 else slow)


def _load_from_disk(model, path):
    onnxprune.save_model(model, path)
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


# ------------------------------------------------------------------------------------------- the model
def test_fake_timer_per_width_costs_are_recovered_exactly(ir_path):
    """A table measured with the fake timer predicts the fake timer's cost of every allocation of table
    widths exactly; the additive model (no interaction terms) does not."""
    a = onnxprune.analyze(str(ir_path))
    assert sorted(g.channels for g in a.prunable) == [32, 40, 48]
    timer = FakeTimer()
    widths = {g.id: [8, 13, 16, 24, g.channels] for g in a.prunable}
    table = build_table(a, timer, batch=2, widths=widths, use_cache=False)
    model = LatencyModel(a, table)
    feed = feeds(a.model, 2)
    worst, worst_additive = 0.0, 0.0
    for combo in itertools.product(*[widths[g] for g in model.gids]):
        counts = dict(zip(model.gids, combo))
        truth = timer.cost(variant(a, counts), feed)
        worst = max(worst, abs(model(model.vector(counts)) / truth - 1))
        worst_additive = max(worst_additive, abs(model.additive(model.vector(counts)) / truth - 1))
    assert worst < 1e-9, worst
    assert worst_additive > 0.05, worst_additive   # the interaction terms matter: the test can tell


def test_fast_widths_are_those_no_larger_width_beats(ir_path):
    a = onnxprune.analyze(str(ir_path))
    g = next(g for g in a.prunable if g.channels == 48)
    ws = [5, 7, 8, 12, 16, 17, 24, 40, 41, 48]
    table = build_table(a, FakeTimer(), widths={g.id: ws}, pairs=False, use_cache=False)
    fast = table.fast_widths(g.id)
    expected = [w for w in ws if not any(_f(v) <= _f(w) for v in ws if v > w)]
    assert fast == expected == [8, 16, 24, 40, 48]


def test_table_cache_is_keyed_by_batch_and_timer(ir_path, monkeypatch, tmp_path):
    monkeypatch.setenv("ONNXPRUNE_CACHE_DIR", str(tmp_path / "cache"))
    a = onnxprune.analyze(str(ir_path))
    t1 = build_table(a, FakeTimer(), batch=1)
    t2 = build_table(a, FakeTimer(), batch=1)
    assert not t1.cached and t2.cached and t2.to_dict() == t1.to_dict()
    t3 = build_table(a, FakeTimer(), batch=2)
    t4 = build_table(a, FakeTimer(slow=3.0), batch=1)
    assert not t3.cached and not t4.cached
    assert t3.full_ms > t1.full_ms
    assert len(list((tmp_path / "cache" / "latency").glob("*.json"))) == 3


# ---------------------------------------------------------------------------------------- allocation
def _brute_force(model, allowed, curves, budget):
    best = None
    for combo in itertools.product(*[allowed[g] for g in model.gids]):
        counts = dict(zip(model.gids, combo))
        if model(model.vector(counts)) <= budget:
            loss = sum(curves[g][n] for g, n in counts.items())
            if best is None or loss < best[0] - 1e-12:
                best = (loss, counts)
    return best


@pytest.mark.parametrize("dims", [(32, 48, 40), (24, 64, 16), (40, 96, 24)])
def test_allocation_under_a_latency_budget_matches_brute_force(tmp_path, dims):
    """Allocation by loss per predicted latency saved, stepping through the fast widths (greedy steps, then
    exchanges), against every allocation of those widths: the same loss, within the budget, for random convex
    loss curves at five budgets."""
    a = onnxprune.analyze(str(inverted_residual(tmp_path / "m.onnx", *dims)))
    model = LatencyModel(a, build_table(a, FakeTimer(), batch=1, use_cache=False))
    allowed = model.allowed()
    for seed in range(4):
        for fraction in (0.3, 0.45, 0.6, 0.75, 0.9):
            rng = np.random.default_rng(seed * 100 + int(fraction * 100))
            curves = {}
            for g in a.prunable:  # convex, decreasing relative losses
                steps = np.sort(rng.uniform(0.2, 1.0, g.channels))[::-1]
                curves[g.id] = np.maximum(np.concatenate([[1.0], 1.0 - np.cumsum(steps) / steps.sum()]), 0.0)
            budget = fraction * model.total
            best = _brute_force(model, allowed, curves, budget)
            if best is None:
                continue
            got = allocate_by_loss(model, curves, fraction, 1, 1, {}, widths=allowed, refined=False)
            assert model(model.vector(got)) <= budget
            assert sum(curves[g][n] for g, n in got.items()) == pytest.approx(best[0], abs=1e-12), \
                (seed, fraction, got, best)


# ----------------------------------------------------------------------------------- round-to auto
def test_round_to_auto_never_picks_a_width_slower_than_a_nearby_one(ir_path, monkeypatch):
    """With a runtime where widths off multiples of 8 cost twice as much per channel, every group's chosen
    width is at least as fast as its count rounded up to any other rounding (the fake's own costs, computed
    here), and the pruned model is faster than the original."""
    monkeypatch.setenv("ONNXPRUNE_TIMER", "fake:slow=2")
    a = onnxprune.analyze(str(ir_path))
    pruned, report = onnxprune.prune(str(ir_path), method="magnitude", flops=0.5)
    rec = report.latency
    assert rec["kind"] == "round_to" and rec["groups"]
    for gid, r in rec["groups"].items():
        g = a.groups[int(gid)]
        near = {rounded(g, r["count"], q) for q in ROUNDINGS}
        assert r["width"] in near
        assert all(_f(r["width"]) <= _f(w) for w in near), (gid, r)
        assert all(float(r["ms"][str(r["width"])]) <= float(r["ms"][str(w)]) for w in near)
    feed = feeds(a.model, 1)
    timer = FakeTimer()
    assert timer.cost(pruned, feed) < timer.cost(a.model, feed)
    assert rec["measured"]["speedup"] > 1
    kept = {g.id: g.kept_count for g in report.groups if not g.frozen}
    assert all(n % 8 == 0 for n in kept.values()), kept   # here every fast rounding is a multiple of 8


def test_round_to_auto_keeps_a_group_whole_only_on_evidence(ir_path):
    """A group keeps its full width only when the full width measures more than NOT_PAYING_MARGIN faster than
    its fastest pruned candidate: equal times within the probe's noise prune it (the quick start's first group
    was kept whole on a 1% difference); a clearly faster full width keeps it whole."""
    a = onnxprune.analyze(str(ir_path))
    g = a.prunable[0]
    k = g.channels // 2
    widths = probe_widths(a, {g.id: k})[g.id]
    for full_faster, whole in ((0.01, False), (2 * NOT_PAYING_MARGIN, True)):
        times = {w: 1.0 for w in widths}
        times[g.channels] = 1.0 / (1 + full_faster)
        allowed, record = choose(a, {g.id: k}, {g.id: times})
        assert record[g.id]["pays"] is (not whole)
        assert (list(allowed[g.id]) == [g.channels]) is whole
        if not whole:
            assert record[g.id]["width"] < g.channels and record[g.id]["width"] in allowed[g.id]


def test_round_to_1_can_be_slower_and_auto_is_not(ir_path, monkeypatch):
    """The complaint: fewer MACs, slower model. With round_to=1 the fake runtime is slower after pruning to 60%
    of the MACs; the default is faster."""
    monkeypatch.setenv("ONNXPRUNE_TIMER", "fake:slow=2")
    a = onnxprune.analyze(str(ir_path))
    feed, timer = feeds(a.model, 1), FakeTimer()
    slow, _ = onnxprune.prune(str(ir_path), method="magnitude", flops=0.6, round_to=1)
    fast, report = onnxprune.prune(str(ir_path), method="magnitude", flops=0.6)
    assert timer.cost(slow, feed) > timer.cost(a.model, feed)
    assert timer.cost(fast, feed) < timer.cost(a.model, feed)
    assert abs(report.macs_ratio - 0.6) <= 0.02 * 0.6 + 1e-9


def test_default_path_refuses_a_model_it_cannot_make_faster(ir_path, monkeypatch, tmp_path):
    """A runtime where every pruned width is slow (penalty 10 off multiples of 8) and a target only odd widths
    reach: the command refuses, one line, exit code 2, nothing written."""
    monkeypatch.setenv("ONNXPRUNE_TIMER", "fake:slow=10")
    small = inverted_residual(tmp_path / "small.onnx", a=8, b=8, c=8)
    out = tmp_path / "o.onnx"
    res = CliRunner().invoke(main, ["prune", str(small), "-o", str(out), "--method", "magnitude", "--flops", "0.3"])
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.exit_code == 2 and len(lines) == 1 and "slower than the original" in lines[0], res.stderr
    assert not out.exists()
    res = CliRunner().invoke(main, ["prune", str(small), "-o", str(out), "--method", "magnitude", "--flops", "0.3",
                                    "--round-to", "1"])
    assert res.exit_code == 0, res.output   # an explicit rounding is the user's choice
    _load_from_disk(onnx.load(str(out)), tmp_path / "again.onnx")


def test_round_to_accepts_auto_and_integers_only(ir_path):
    for bad in (0, -3, "eight", 2.5):
        with pytest.raises(OptionError) as exc:
            onnxprune.prune(str(ir_path), method="magnitude", keep_ratio=0.5, round_to=bad)
        assert str(exc.value).startswith("round_to=")
    _, r8 = onnxprune.prune(str(ir_path), method="magnitude", keep_ratio=0.5, round_to="8")
    assert r8.latency == {} and all(g.kept_count % 8 == 0 for g in r8.groups if not g.frozen)


# ---------------------------------------------------------------------------------- latency targets
@pytest.mark.parametrize("spec,fraction", [("fake:slow=2", 0.5), ("fake:slow=2,power=2", 0.4),
                                           ("fake:slow=2,overhead_ms=0.2", 0.7)])
def test_latency_target_is_reached_as_measured(ir_path, monkeypatch, tmp_path, spec, fraction):
    """`latency=F`: the pruned model's cost under the timer (recomputed here from the written file) is F of
    the original's within the 5% tolerance, also when the runtime's costs do not add up (power 2: the
    table's prediction is off and the measured correction has to fix it)."""
    monkeypatch.setenv("ONNXPRUNE_TIMER", spec)
    monkeypatch.setenv("ONNXPRUNE_CACHE_DIR", str(tmp_path / "cache"))
    from onnxprune.latency.runtime import default_timer
    timer = default_timer(Runtime())
    out = tmp_path / "p.onnx"
    res = CliRunner().invoke(main, ["prune", str(ir_path), "-o", str(out), "--method", "magnitude", "--latency",
                                    str(fraction), "--report", str(tmp_path / "r.json")])
    assert res.exit_code == 0, res.output
    sess = _load_from_disk(onnx.load(str(out)), tmp_path / "again.onnx")
    assert sess.get_outputs()[0].name == "y"
    original = onnx.load(str(ir_path))
    feed = feeds(original, 1)
    ratio = timer.cost(onnx.load(str(out)), feed) / timer.cost(original, feed)
    assert abs(ratio / fraction - 1) <= 0.05, ratio
    rec = json.loads((tmp_path / "r.json").read_text())["latency"]
    assert rec["kind"] == "latency" and rec["target"] == fraction
    assert rec["measured_ratio"] == pytest.approx(ratio, rel=1e-9)
    if "power" in spec:
        assert abs(rec["iterations"][0]["measured_ratio"] / fraction - 1) > 0.05, "the first try should miss"
        assert len(rec["iterations"]) > 1
    page = tmp_path / "r.html"
    assert CliRunner().invoke(main, ["report", str(tmp_path / "r.json"), "-o", str(page)]).exit_code == 0
    html = page.read_text()
    # MACs per layer and latency per group (no loss curves without calibration)
    assert html.count("data:image/png;base64,") == 2 and f"target {fraction:.3g} of the original" in html
    fast = {int(g): v["fast"] for g, v in rec["groups"].items()}
    kept = {g["id"]: g["kept_count"] for g in json.loads((tmp_path / "r.json").read_text())["groups"]
            if not g["frozen"]}
    assert all(kept[g] in fast[g] for g in kept), (kept, fast)


def test_latency_target_when_the_tables_cannot_aim(ir_path, monkeypatch, tmp_path):
    """Tables that predict no saving at any width (as wall-clock noise made them on a busy machine), while the
    measurement shows the target is reachable: the allocation aims with the MACs over the fast widths, the
    measured correction reaches the target, and the report says so. Before, the goal was clipped above 1 and
    the run failed with "latency=1.0: unreachable"."""
    import onnxprune.pipeline.budget as budget
    monkeypatch.setenv("ONNXPRUNE_TIMER", "fake:slow=2")
    monkeypatch.setenv("ONNXPRUNE_CACHE_DIR", str(tmp_path / "cache"))

    class Blind(LatencyModel):
        def __call__(self, counts):
            c = np.atleast_2d(np.asarray(counts, np.float64))
            full = float(LatencyModel.__call__(self, self.channels))
            out = np.where((c < self.channels).any(axis=1), 1.3 * full, full)
            return out if np.ndim(counts) == 2 else float(out[0])

    monkeypatch.setattr(budget, "LatencyModel", Blind)
    pruned, report = onnxprune.prune(str(ir_path), method="magnitude", latency=0.5)
    rec = report.latency
    assert rec["aimed_by"] == "macs" and "corrected by measurement" in rec["aim_note"]
    timer = FakeTimer()
    original = onnx.load(str(ir_path))
    feed = feeds(original, 1)
    ratio = timer.cost(pruned, feed) / timer.cost(original, feed)
    assert abs(ratio / 0.5 - 1) <= 0.05, (ratio, rec["iterations"])


def test_latency_target_with_calibration_and_loss_allocation(zoo_models, monkeypatch):
    monkeypatch.setenv("ONNXPRUNE_TIMER", "fake:slow=2")
    import zoo
    z = next(z for z in zoo_models if z.name == "inverted_res" and z.exporter == "ts17")
    cal = zoo.random_input(z, 40, 3)
    pruned, report = onnxprune.prune(str(z.path), cal, latency=0.6, allocate="loss", batch_size=16)
    a = onnxprune.analyze(str(z.path))
    feed = feeds(a.model, 1, cal)
    ratio = FakeTimer().cost(pruned, feed) / FakeTimer().cost(a.model, feed)
    assert abs(ratio / 0.6 - 1) <= 0.05, ratio


def test_unreachable_latency_target_is_an_option_error(ir_path):
    with pytest.raises(OptionError) as exc:
        onnxprune.prune(str(ir_path), method="magnitude", latency=0.001)
    assert str(exc.value).startswith("latency=0.001: unreachable")


# ------------------------------------------------------------------------------------------ inputs
def test_feeds_take_rows_from_data_or_declared_shapes(tmp_path, ir_path):
    m = onnx.load(str(ir_path))
    x = np.arange(2 * 3 * 16 * 16, dtype=np.float32).reshape(2, 3, 16, 16)
    f = feeds(m, 5, {"x": x})
    assert f["x"].shape == (5, 3, 16, 16) and np.array_equal(f["x"][2], x[0]) and np.array_equal(f["x"][3], x[1])
    assert feeds(m, 3)["x"].shape == (3, 3, 16, 16)
    m.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "H"
    with pytest.raises(onnxprune.UserError, match="input 'x': dimension 2 is symbolic"):
        feeds(m, 1)


# ------------------------------------------------------------------------------------------- bench
def test_bench_reports_ratios_to_the_first_model(ir_path, tmp_path, monkeypatch):
    monkeypatch.setenv("ONNXPRUNE_TIMER", "fake:slow=2")
    half, _ = onnxprune.prune(str(ir_path), method="magnitude", flops=0.5, round_to=8)
    half_path = tmp_path / "half.onnx"
    onnxprune.save_model(half, half_path)
    res = CliRunner().invoke(main, ["bench", str(ir_path), str(half_path), "--batch", "1,4", "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)["rows"]
    assert [(r["model"], r["batch"]) for r in rows] == [(str(ir_path), 1), (str(half_path), 1), (str(ir_path), 4),
                                                       (str(half_path), 4)]
    timer = FakeTimer()
    for b in (1, 4):
        o = onnx.load(str(ir_path))
        want = timer.cost(o, feeds(o, b)) / timer.cost(half, feeds(half, b))
        got = next(r for r in rows if r["batch"] == b and r["model"] == str(half_path))
        assert got["ratio_to_first"] == pytest.approx(want, rel=1e-9)
        assert got["throughput_per_s"] == pytest.approx(b * 1e3 / timer.cost(half, feeds(half, b)), rel=1e-9)
    text = CliRunner().invoke(main, ["bench", str(ir_path), str(half_path)])
    o = onnx.load(str(ir_path))
    want1 = timer.cost(o, feeds(o, 1)) / timer.cost(half, feeds(half, 1))
    line = next(ln for ln in text.stdout.splitlines() if ln.startswith(str(half_path)))
    assert text.exit_code == 0 and line.split()[-1] == f"{want1:.2f}x", text.stdout


@pytest.mark.parametrize("args,needle", [
    (["--batch", "0"], "--batch 0:"), (["--batch", "a,b"], "--batch a,b:"), (["--threads", "0"], "--threads 0:"),
    (["--rounds", "0"], "--rounds 0:"), (["--fp16"], "--fp16 True:"),
])
def test_bench_bad_options_are_one_line(ir_path, args, needle):
    res = CliRunner().invoke(main, ["bench", str(ir_path), *args])
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.exit_code == 2 and len(lines) == 1 and needle in lines[0], res.stderr


def test_bench_refuses_symbolic_dims_without_data_and_takes_them_from_data(ir_path, tmp_path):
    m = onnx.load(str(ir_path))
    m.graph.input[0].type.tensor_type.shape.dim[3].dim_param = "W"
    p = tmp_path / "sym.onnx"
    onnx.save(m, str(p))
    res = CliRunner().invoke(main, ["bench", str(p)])
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.exit_code == 2 and len(lines) == 1 and "input 'x'" in lines[0], res.stderr
    np.savez(tmp_path / "d.npz", x=np.zeros((2, 3, 16, 12), np.float32))
    res = CliRunner().invoke(main, ["bench", str(p), "--data", str(tmp_path / "d.npz"), "--json"])
    assert res.exit_code == 0, res.output
    o = onnx.load(str(p))
    want = FakeTimer(slow=1.0).cost(o, {"x": np.zeros((1, 3, 16, 12), np.float32)})
    assert json.loads(res.stdout)["rows"][0]["median_ms"] == pytest.approx(want, rel=1e-9)


@pytest.mark.parametrize("provider", ["cuda", "tensorrt"])
def test_gpu_providers_are_refused_when_absent_and_run_when_present(ir_path, provider):
    from onnxprune.latency.runtime import EXECUTION_PROVIDERS, OrtTimer
    from onnxprune.options import Provider
    rt = Runtime(Provider(provider))
    if EXECUTION_PROVIDERS[rt.provider] not in ort.get_available_providers():
        with pytest.raises(OptionError, match=f"{EXECUTION_PROVIDERS[rt.provider]} is not available"):
            rt.check()
        res = CliRunner().invoke(main, ["bench", str(ir_path), "--provider", provider])
        assert res.exit_code == 2 and f"--provider {provider}:" in res.stderr
        pytest.skip(f"{provider} not available: refusal checked, run not")
    rt.check()
    for fp16 in (False, True):   # a real session on the GPU provider, no timing asserted
        runner = OrtTimer(Runtime(Provider(provider), fp16=fp16)).runner(onnx.load(str(ir_path)),
                                                                         feeds(onnx.load(str(ir_path)), 2))
        assert runner() > 0


def test_copy_of_a_zoo_model_prunes_to_latency_from_the_command_line(zoo_models, tmp_path, monkeypatch):
    monkeypatch.setenv("ONNXPRUNE_TIMER", "fake:slow=2")
    z = next(z for z in zoo_models if z.name == "basic_res" and z.exporter == "ts17")
    shutil.copy(z.path, tmp_path / z.path.name)
    out = tmp_path / "p.onnx"
    res = CliRunner().invoke(main, ["prune", str(tmp_path / z.path.name), "-o", str(out), "--method", "magnitude",
                                    "--latency", "0.6"])
    assert res.exit_code == 0, res.output
    assert "latency" in res.stdout and "measured" in res.stdout
    ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])


def test_latency_target_on_the_shipped_model(tmp_path, monkeypatch):
    """The shipped Fashion-MNIST ResNet, calibrated (its first 128 calibration images), `--latency 0.5
    --allocate loss`: the written model's cost under the fake runtime (odd widths twice as slow per
    channel) is half the original's within 5%."""
    import pathlib
    monkeypatch.setenv("ONNXPRUNE_TIMER", "fake:slow=2")
    fraction = 0.5
    root = pathlib.Path(__file__).resolve().parents[1] / "models"
    with np.load(root / "fmnist_calib.npz") as z:
        example = {k: z[k][:128] for k in z.files if k != "labels"}
    np.savez(tmp_path / "cal.npz", **example)
    out = tmp_path / "p.onnx"
    res = CliRunner().invoke(main, ["prune", str(root / "fmnist_resnet.onnx"), "-o", str(out), "--calib",
                                    str(tmp_path / "cal.npz"), "--latency", str(fraction), "--allocate", "loss",
                                    "--max-positions", "16", "-q"])
    assert res.exit_code == 0, res.output
    pruned = onnx.load(str(out))
    ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    original = onnx.load(str(root / "fmnist_resnet.onnx"))
    timer = FakeTimer()
    ratio = timer.cost(pruned, feeds(pruned, 1, example)) / timer.cost(original, feeds(original, 1, example))
    assert abs(ratio / fraction - 1) <= 0.05, ratio
