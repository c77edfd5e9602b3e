"""Sequential greedy pruning with calibration data (DESIGN.md, "Greedy selection").

Groups are visited in topological order of their first consumer. For each group one pass over the
calibration data taps the consumers' inputs in the network pruned so far (its masked reference) and
their outputs in the original network, and accumulates the consumers' statistics; the group's
channels are then chosen (greedy or baseline), γ or the consumers' whole weights re-fitted, and the
decision applied before the next group. With a MACs/params target and `allocate="loss"`, one extra
profiling pass on the original network gives every group's greedy loss curve, from which channels
are allocated across groups by marginal loss per MAC.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from . import greedy
from .allocation import allocate_by_loss, check_reachable, macs_model, params_model
from .analysis import Analysis, Group
from .calibration import Calibration, checked_batches
from .consumers import bias_index, consumers_of, original_dense, to_onnx
from .errors import UserError
from .global_imitation import OutputLoss, exact_select, taylor_importance, taylor_select
from .rewrite import Rewriter
from .selection import Selection, _ensure_segments, _scores_magnitude, _top_k, counts_for_ratio
from .statistics import NotSupported, Stats, conditioned, group_terms, loss, refit_curve, ridge_refit
from .taps import Tap

log = logging.getLogger("onnxprune")
GREEDY = ("greedy-local", "greedy-convex", "gfs", "greedy-omp")
GLOBAL = ("greedy-taylor", "greedy-global", "greedy-combined", "taylor")
BASELINES = ("magnitude", "random")
REFITS = ("none", "gamma", "full")
RIDGE_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)


@dataclass
class Options:
    method: str = "greedy-local"
    refit: str = "full"
    batch_size: int = 32
    max_positions: int | None = 64
    ridge: float = 1e-3
    seed: int = 0
    norm: str = "l1"
    quiet: bool = False
    output_loss: str = "kl"       # global imitation: kl (softmax outputs) or mse
    global_samples: int = 256     # calibration samples the output loss is measured on
    taylor_rounds: int = 4        # backward passes per group for greedy-taylor
    exact_limit: int = 32         # greedy-global is exact up to this many channels, Taylor above


@dataclass
class GroupResult:
    method: str
    err_calib: float | None = None
    err_holdout: float | None = None
    curve: list[float] = field(default_factory=list)
    note: str = ""


def _order(analysis: Analysis) -> list[Group]:
    first = {}
    roots = analysis.class_of
    for e in analysis.edits:
        if e.kind in ("consumer", "grouped_consumer"):
            for c in set(roots[e.labels].tolist()):
                gid = analysis.group_of_class.get(c)
                if gid is not None:
                    first[gid] = min(first.get(gid, e.node), e.node)
    return sorted(analysis.prunable, key=lambda g: first.get(g.id, 1 << 30))


class _Collector:
    """Streams calibration batches through taps and accumulates every consumer's statistics."""

    def __init__(self, consumers, opts: Options):
        self.consumers, self.opts = consumers, opts
        self.stats = {split: {c.node: None for c in consumers} for split in ("calib", "holdout")}

    def run(self, cal: Calibration, tap_in: Tap, tap_out: Tap, desc: str) -> None:
        bar = tqdm(total=cal.size, desc=desc, unit="sample", leave=False, disable=self.opts.quiet or None)
        for split in ("calib", "holdout"):
            for first, batch in checked_batches(cal, self.opts.batch_size, split):
                xs = tap_in(batch)
                ys = xs if tap_out is tap_in else tap_out(batch)
                for c in self.consumers:
                    x, y = c.features(xs[c.input], ys[c.output], first, self.opts.max_positions, self.opts.seed)
                    if not (np.isfinite(x.numpy()).all() and np.isfinite(y.numpy()).all()):
                        raise UserError(f"{cal.what}: activations at '{c.name}' are NaN or Inf")
                    st = self.stats[split][c.node]
                    if st is None:
                        st = self.stats[split][c.node] = Stats(x.shape[1], y.shape[1])
                    st.add(x, y)
                bar.update(len(next(iter(batch.values()))))
        bar.close()


def _complete(group: Group, idx: np.ndarray, k: int, scores: np.ndarray) -> np.ndarray:
    """Make a selection exactly `k` channels with equal counts per block (grouped convolutions),
    adding the best-scoring missing channels or dropping the worst surplus ones."""
    chosen = set(idx.tolist())
    quota = group.quotas(k)
    blocks = group.blocks
    out = []
    for b in range(len(quota)):
        members = np.flatnonzero(blocks == b)
        inside = [m for m in members if m in chosen]
        outside = sorted((m for m in members if m not in chosen), key=lambda m: -scores[m])
        inside = sorted(inside, key=lambda m: -scores[m])[:quota[b]]
        out.extend(inside + outside[:quota[b] - len(inside)])
    return np.array(sorted(out), dtype=np.int64)


@dataclass
class _Outcome:
    kept: np.ndarray
    gamma: np.ndarray
    replace: dict = field(default_factory=dict)
    dense: dict = field(default_factory=dict)
    err_calib: float | None = None
    err_holdout: float | None = None


class _GroupStats:
    """A group's local terms (G, c, rr) on the calibration and held-out splits."""

    def __init__(self, pruner, group, consumers, col, keep, gamma):
        self.consumers, self.col, self.keep, self.gamma = consumers, col, keep, gamma
        self.G, self.c, self.rr = pruner._terms(group, consumers, col.stats["calib"], keep, gamma)
        held = col.stats["holdout"]
        self.held = held if all(v is not None for v in held.values()) else None
        self.Gh, self.ch, self.rrh = pruner._terms(group, consumers, self.held, keep, gamma) if self.held \
            else (None, None, None)


class _GlobalState:
    """The torch twin and the output losses (calibration subset and held-out split)."""

    def __init__(self, analysis, cal, opts):
        from .twin import Twin
        self.analysis, self.opts = analysis, opts
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            self.original = Twin(analysis, device=self.device)
        except NotImplementedError as exc:
            raise UserError(f"--method {opts.method}: {exc}; use --method greedy-local") from None
        self.calib = OutputLoss(cal, opts.output_loss, opts.global_samples, opts.batch_size, self.device, "calib")
        self.holdout = OutputLoss(cal, opts.output_loss, opts.global_samples, opts.batch_size, self.device,
                                  "holdout")
        for part in (self.calib, self.holdout):
            part.set_reference(self.original)

    def twin_for(self, sel: Selection):
        from .twin import Twin
        keep, gamma = sel.class_arrays(self.analysis)
        twin = Twin(self.analysis, device=self.device, replace=sel.replace, keep=keep) if sel.replace \
            else self.original
        gates = torch.as_tensor(np.where(keep, gamma, 0.0), dtype=torch.float32, device=self.device)
        return twin, gates


class GreedyPruner:
    def __init__(self, analysis: Analysis, cal: Calibration, opts: Options):
        if opts.method not in GREEDY + GLOBAL + BASELINES:
            raise UserError(f"--method {opts.method}: unknown (choose from {', '.join(GREEDY + GLOBAL + BASELINES)})")
        if opts.output_loss not in ("kl", "mse"):
            raise UserError(f"--output-loss {opts.output_loss}: choose kl or mse")
        if opts.refit not in REFITS:
            raise UserError(f"--refit {opts.refit}: choose from {', '.join(REFITS)}")
        self.analysis, self.cal, self.opts = analysis, cal, opts
        self.rng = np.random.default_rng(opts.seed)
        self.sel = Selection()
        self.dense: dict[int, np.ndarray] = {}   # re-fitted consumers: node -> W̃
        self.results: dict[int, GroupResult] = {}
        self.magnitude = _scores_magnitude(analysis, opts.norm)
        self._global_state = None

    # ----- allocation -------------------------------------------------------------------------
    def profile_curves(self) -> dict[int, np.ndarray]:
        """Relative imitation loss at every kept count, for every group, on the original network (one
        pass over the calibration data). Channels are added in the method's own order (the greedy-local
        path for greedy and global methods); the loss is the one the chosen re-fit reaches: the
        consumers' full re-fit (`refit_curve`) or least-squares γ."""
        groups, consumers = {}, {}
        for g in self.analysis.prunable:
            try:
                cs = consumers_of(self.analysis, g)
            except NotSupported:
                continue
            groups[g.id] = cs
            for c in cs:
                consumers[c.node] = c
        if not consumers:
            return {}
        col = _Collector(list(consumers.values()), self.opts)
        names = [c.input for c in consumers.values()] + [c.output for c in consumers.values()]
        tap = Tap(self.analysis.model, names)
        col.run(self.cal, tap, tap, "profiling")
        curves = {}
        alive = np.ones(len(self.analysis.class_of), bool)
        for gid, cs in groups.items():
            g = self.analysis.groups[gid]
            G, c, rr = self._terms(g, cs, col.stats["calib"], alive, np.ones(len(alive)))
            order, losses = self._profile_order(g, cs, col.stats["calib"], G, c, rr)
            if self.opts.refit == "full":
                curve = sum(refit_curve(col.stats["calib"][x.node], self._member(g, x), order) for x in cs)
            else:
                curve = losses if losses is not None else greedy.prefix_losses(G, c, rr, order)
            curve = np.asarray(curve) / max(rr, 1e-300)
            curves[gid] = np.concatenate([curve, np.full(g.channels + 1 - len(curve), curve[-1])])
        return curves

    def _profile_order(self, group: Group, consumers, stats, G, c, rr) -> tuple[list[int], np.ndarray | None]:
        """The order in which the method adds channels, for the allocation's loss curves, and the
        least-squares-γ losses along it where the greedy-local path gives them for free."""
        if self.opts.method in BASELINES:
            scores = np.random.default_rng((self.opts.seed, group.id)).random(group.channels) \
                if self.opts.method == "random" \
                else np.array([self.magnitude.get(ch, 0.0) for ch in group.classes.tolist()])
            return np.argsort(-scores, kind="stable").tolist(), None
        if self.opts.method == "greedy-omp":  # its own path on the original network
            omp = self._omp_path(group, consumers, stats, np.ones(len(self.analysis.class_of), bool),
                                 group.channels)
            if omp is not None:
                return omp.order, None
        path = greedy.greedy_local(G, c, rr, group.channels)
        return path.order, path.losses

    def counts(self, keep_ratio, fraction, what, allocate, round_to, min_channels, overrides) -> dict[int, int]:
        a = self.analysis
        if keep_ratio is not None:
            return counts_for_ratio(a, keep_ratio, round_to, min_channels, overrides)
        counts = self._allocate(fraction, what, allocate, round_to, min_channels, overrides)
        if what != "flops":
            return counts
        # the cost model spreads a group's count evenly; measure it on a stand-in selection (the same
        # per-piece quotas as the real one) and move single steps of free groups until within 2%
        from .selection import fit_to_target, select
        sel = select(a, counts, "magnitude", self.opts.norm)
        fit_to_target(a, sel, {g: v for g, v in sel.scores.items() if g not in overrides}, fraction, min_channels,
                      round_to=round_to)
        return {g: len(v) for g, v in sel.kept.items()}

    def _allocate(self, fraction, what, allocate, round_to, min_channels, overrides) -> dict[int, int]:
        a = self.analysis
        from .selection import counts_for_target
        if allocate == "uniform":
            return counts_for_target(a, fraction, what, round_to, min_channels, overrides)
        model = macs_model(a) if what == "flops" else params_model(a)
        if not 0 < fraction <= 1:
            raise UserError(f"--{what} {fraction}: must be in (0, 1]")
        check_reachable(model, counts_for_ratio(a, 0.0, round_to, min_channels, overrides), fraction, what, 0.02)
        curves = self.profile_curves()
        fixed = dict(overrides)
        for g in a.prunable:  # groups without statistics keep the uniform share
            if g.id not in curves and g.id not in fixed:
                fixed[g.id] = counts_for_ratio(a, fraction, round_to, min_channels)[g.id]
        return allocate_by_loss(model, curves, fraction, round_to, min_channels, fixed)

    # ----- the sequential pass -------------------------------------------------------------
    def _current_weights(self, consumer, keep, gamma) -> np.ndarray:
        if consumer.node in self.dense:
            return self.dense[consumer.node]
        wt = original_dense(consumer, self.analysis)
        roots = self.analysis.class_of
        scale = np.where(keep, gamma, 0.0)[roots[consumer.labels]]
        wt[:, :-1] *= scale
        return wt

    def _member(self, group: Group, consumer) -> np.ndarray:
        pos = {c: i for i, c in enumerate(group.classes.tolist())}
        roots = self.analysis.class_of
        return np.array([pos.get(c, -1) for c in roots[consumer.labels].tolist()], dtype=np.int64)

    def _terms(self, group, consumers, stats, keep, gamma):
        roots = self.analysis.class_of
        items = [(stats[c.node], self._current_weights(c, keep, gamma), self._member(group, c),
                  keep[roots[c.labels]]) for c in consumers]
        return group_terms(items, group.channels)

    def run(self, counts: dict[int, int]) -> Selection:
        order = [g for g in _order(self.analysis) if g.id in counts]
        for g in tqdm(order, desc="groups", unit="group", disable=self.opts.quiet or None):
            self._prune_group(g, counts[g.id])
        return self.sel

    def _baseline(self, group: Group, k: int) -> np.ndarray:
        if self.opts.method == "random":
            scores = self.rng.random(group.channels)
        else:
            scores = np.array([self.magnitude.get(c, 0.0) for c in group.classes.tolist()])
        return _ensure_segments(self.analysis, group, _top_k(group, scores, k), scores)

    def _prune_group(self, group: Group, k: int) -> None:
        opts = self.opts
        keep, gamma = self.sel.class_arrays(self.analysis)
        try:
            consumers = consumers_of(self.analysis, group)
        except NotSupported as exc:
            method = "magnitude" if opts.method not in BASELINES else opts.method
            idx = self._baseline(group, k)
            self.sel.kept[group.id], self.sel.gamma[group.id] = idx, np.ones(len(idx))
            self.results[group.id] = GroupResult(method, note=f"no statistics ({exc}); {method}, no re-fit")
            return
        masked = Rewriter(self.analysis, keep, gamma, masked=True, replace=self.sel.replace).run()
        col = _Collector(consumers, opts)
        col.run(self.cal, Tap(masked, [c.input for c in consumers]),
                Tap(self.analysis.model, [c.output for c in consumers]), f"group {group.id}")
        st = _GroupStats(self, group, consumers, col, keep, gamma)
        cands = self._candidates(group, k, st)
        outcomes = [(name, self._outcome(group, k, idx, gam, st), curve, note) for name, idx, gam, curve, note in cands]
        name, out, curve, note = outcomes[0]
        if len(outcomes) > 1:  # greedy-combined: the lower output loss on held-out data wins
            scored = [(self._output_loss(group, o, held=True), n, o, cv, nt) for n, o, cv, nt in outcomes]
            scored.sort(key=lambda t: t[0])
            best, name, out, curve, note = scored[0]
            note = "; ".join(f"{n}: held-out output loss {v:.4g}" for v, n, *_ in scored) + f"; {name} kept"
        self.sel.kept[group.id], self.sel.gamma[group.id] = out.kept, out.gamma
        self.sel.replace.update(out.replace)
        self.dense.update(out.dense)
        short = [(c.name, col.stats["calib"][c.node].rows, len(c.labels)) for c in consumers
                 if col.stats["calib"][c.node].rows < len(c.labels)]
        if short:
            name_, rows, feats = short[0]
            warning = (f"only {rows} calibration rows for the {feats} inputs of '{name_}': fits are "
                       f"ridge-regularised; give at least {feats} rows (samples x sampled positions)")
            log.warning("group %d: %s", group.id, warning)
            note = "; ".join(x for x in (note, warning) if x)
        self.results[group.id] = GroupResult(name if opts.method != "greedy-combined" else f"combined:{name}",
                                             out.err_calib, out.err_holdout, curve, note)

    def _candidates(self, group, k, st) -> list:
        """(method, kept indices, γ, loss curve, note) for each selection to try on this group."""
        opts, G, c, rr = self.opts, st.G, st.c, st.rr
        quota = group.quotas(k) if group.n_blocks > 1 else None
        blocks = group.blocks if quota is not None else None
        full = greedy.greedy_local(G, c, rr, group.channels)  # the whole loss curve, for the report
        curve = (full.losses / max(rr, 1e-300)).tolist()
        out = []
        if opts.method == "greedy-omp":
            path = self._omp_path(group, st.consumers, st.col.stats["calib"], st.keep, k, blocks, quota)
            name, note = "greedy-omp", ""
            if path is None:
                path = full if quota is None else greedy.greedy_local(G, c, rr, k, blocks, quota)
                name, note = "greedy-local", "greedy-local: channels read unequal numbers of consumer inputs"
            idx = np.array(sorted(path.order[:k]), dtype=np.int64)
            out.append((name, idx, greedy.ls_gamma(G, c, idx), curve, note))
        elif opts.method in GREEDY or opts.method == "greedy-combined":
            method = "greedy-local" if opts.method == "greedy-combined" else opts.method
            # an unconstrained greedy-local path to k is the first k steps of the whole curve's path
            path = full if method == "greedy-local" and quota is None \
                else greedy.SELECTORS[method](G, c, rr, k, blocks, quota)
            idx = np.array(sorted(path.order[:k]), dtype=np.int64)
            gam = greedy.ls_gamma(G, c, idx) if path.gamma is None else path.gamma[idx]
            out.append((method, idx, gam, curve, ""))
        if opts.method in GLOBAL:
            g = self._global()
            twin, gates = g.twin_for(self.sel)
            classes = group.classes
            if opts.method == "taylor":
                scores = taylor_importance(twin, g.calib, gates, classes)
                idx = _top_k(group, scores, k)
                out.append(("taylor", idx, np.ones(len(idx)), [], ""))
            elif opts.method == "greedy-global" and group.channels <= opts.exact_limit:
                idx = np.array(exact_select(twin, g.calib, gates, classes, k, quota, blocks), dtype=np.int64)
                out.append(("greedy-global", idx, greedy.ls_gamma(G, c, idx), curve, "exact"))
            else:
                chosen, passes = taylor_select(twin, g.calib, gates, classes, k, quota, blocks, opts.taylor_rounds)
                idx = np.array(chosen, dtype=np.int64)
                name = "greedy-global" if opts.method == "greedy-global" else "greedy-taylor"
                out.append((name, idx, greedy.ls_gamma(G, c, idx), curve, f"Taylor, {passes} backward passes"))
        if opts.method in BASELINES:
            idx = self._baseline(group, k)
            out.append((opts.method, idx, np.ones(len(idx)), curve, ""))
        fixed_out = []
        for name, idx, gam, cv, note in out:
            fixed = _complete(group, idx, k, np.abs(c) / np.sqrt(np.maximum(np.diag(G), 1e-300)))
            fixed = _ensure_segments(self.analysis, group, fixed, np.zeros(group.channels))
            if not np.array_equal(fixed, idx):
                idx, gam = fixed, greedy.ls_gamma(G, c, fixed)
            if opts.refit == "gamma":
                gam = greedy.ls_gamma(G, c, idx)
            fixed_out.append((name, idx, gam, cv, note))
        return fixed_out

    def _omp_path(self, group, consumers, stats, keep, n, blocks=None, quota=None):
        """Group OMP over the consumers' statistics (inputs outside the group that are still kept stay in
        every fit), or None where a consumer's channels read unequal numbers of inputs."""
        roots = self.analysis.class_of
        terms = [conditioned(stats[c.node], self._member(group, c), keep[roots[c.labels]]) for c in consumers]
        try:
            return greedy.group_omp(terms, group.channels, n, blocks, quota)
        except ValueError:
            return None

    def _outcome(self, group, k, idx, gam, st) -> "_Outcome":
        """The group's decision with its re-fit applied, and its imitation errors (not yet committed)."""
        out = _Outcome(idx, gam)
        if self.opts.refit == "full":
            out.gamma = np.ones(len(idx))
            trial = Selection(dict(self.sel.kept), dict(self.sel.gamma))
            trial.kept[group.id], trial.gamma[group.id] = idx, out.gamma
            new_keep, _ = trial.class_arrays(self.analysis)
            total, total_h = self._full_refit(st, new_keep, out)
            out.err_calib = total / max(st.rr, 1e-300)
            out.err_holdout = None if st.held is None else total_h / max(st.rrh, 1e-300)
        else:
            out.err_calib = loss(st.G, st.c, st.rr, idx, gam) / max(st.rr, 1e-300)
            if st.held is not None:
                out.err_holdout = loss(st.Gh, st.ch, st.rrh, idx, gam) / max(st.rrh, 1e-300)
        return out

    def _full_refit(self, st, new_keep, out) -> tuple[float, float]:
        """Ridge re-fit of every consumer's whole weight (and bias) on its kept inputs; returns the
        summed loss on the calibration and held-out splits."""
        roots = self.analysis.class_of
        total, total_h = 0.0, 0.0
        for c in st.consumers:
            current = self._current_weights(c, st.keep, st.gamma)
            fixed_bias = None if bias_index(c, self.analysis) is not None else current[:, -1]
            calib, held = st.col.stats["calib"][c.node], st.col.stats["holdout"][c.node]
            feats = new_keep[roots[c.labels]]
            # ridge towards the current weights, its strength chosen on the held-out split when there is
            # one: with few samples per input the fit stays near the original instead of near 0
            lams = RIDGE_GRID if held is not None else (self.opts.ridge,)
            blocks = c.blocks(current.shape[0])
            fits = [ridge_refit(calib, feats, lam, fixed_bias, prior=current, blocks=blocks) for lam in lams]
            wt = min(fits, key=held.loss) if held is not None else fits[0]
            out.dense[c.node] = wt
            out.replace[c.node] = to_onnx(c, self.analysis, wt)
            total += calib.loss(wt)
            if held is not None:
                total_h += held.loss(wt)
        return total, total_h

    # ----- global imitation -----------------------------------------------------------------------
    def _global(self) -> "_GlobalState":
        if self._global_state is None:
            self._global_state = _GlobalState(self.analysis, self.cal, self.opts)
        return self._global_state

    def _output_loss(self, group, out: "_Outcome", held: bool) -> float:
        g = self._global()
        trial = Selection(dict(self.sel.kept), dict(self.sel.gamma), {**self.sel.replace, **out.replace})
        trial.kept[group.id], trial.gamma[group.id] = out.kept, out.gamma
        twin, gates = g.twin_for(trial)
        return (g.holdout if held and g.holdout.samples else g.calib).value(twin, gates)
