"""The sequential pruner: groups in topological order, each decided on statistics of the network pruned
so far (docs/DESIGN.md, "The sequential pass").

For each group one pass over the calibration data taps the consumers' inputs in the network pruned so
far (its masked reference) and their outputs in the original network, and accumulates the consumers'
statistics. The method proposes candidates (`selection.methods`); each is completed to the exact kept
count, re-fitted (`refit`), and, when there are several, the one with the lower held-out output loss is
kept. The decision is applied before the next group.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from ..analysis import Analysis, Group
from ..calibration import Calibration
from ..calibration.source import token_mask_input
from ..calibration.taps import Tap
from ..options import Allocation, PruneOptions, Refit
from ..rewrite import Rewriter
from ..selection import Selection, greedy
from ..selection.baselines import ensure_segments, magnitude_scores, top_k
from ..selection.methods import Candidate, get_method
from ..statistics import NotSupported, consumers_of
from ..statistics.collector import Collector
from ..statistics.consumer import Consumer
from ..statistics.output_cache import OutputCache
from .global_state import GlobalImitation
from .problem import LocalProblem
from .refit import Outcome, apply_refit

log = logging.getLogger("onnxprune")


@dataclass
class GroupResult:
    """How one group was decided, for the report."""
    method: str
    err_calib: float | None = None
    err_holdout: float | None = None
    curve: list[float] = field(default_factory=list)
    note: str = ""
    # a composite method's candidates: {"method", "kept", "gamma", "held_out_output_loss"}, best first
    candidates: list[dict] = field(default_factory=list)


def visiting_order(analysis: Analysis) -> list[Group]:
    """Prunable groups in topological order of their first consumer."""
    first: dict[int, int] = {}
    roots = analysis.class_of
    for e in analysis.edits:
        if e.kind in ("consumer", "grouped_consumer", "mask_input"):
            for c in set(roots[e.labels].tolist()):
                gid = analysis.group_of_class.get(c)
                if gid is not None:
                    first[gid] = min(first.get(gid, e.node), e.node)
    return sorted(analysis.prunable, key=lambda g: first.get(g.id, 1 << 30))


def complete(group: Group, idx: np.ndarray, k: int, scores: np.ndarray) -> np.ndarray:
    """Make a selection exactly `k` channels with each block's quota (grouped convolutions, split pieces),
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


class GreedyPruner:
    def __init__(self, analysis: Analysis, cal: Calibration, options: PruneOptions, quiet: bool = True,
                 head_scores: dict[int, np.ndarray] | None = None):
        """`head_scores`: per re-based Q·K dims group, its channels' scores (`head_basis.rebase`): the group keeps
        the highest, with no statistics and no re-fit."""
        if options.refit.refit is None:
            raise ValueError("GreedyPruner needs the re-fit resolved (RefitOptions.resolved)")
        self.analysis, self.cal, self.options, self.quiet = analysis, cal, options, quiet
        self.method = get_method(options.selection.method)
        self.refit: Refit = options.refit.refit
        self.seed = options.selection.seed
        self.rng = np.random.default_rng(self.seed)
        self.head_scores = dict(head_scores or {})
        self.sel = Selection()
        self.dense: dict[int, np.ndarray] = {}   # re-fitted consumers: node -> W̃
        self.results: dict[int, GroupResult] = {}
        self.fitted: list[int] = []   # the groups re-fitted on their statistics, in the order they were decided
        self.magnitude = magnitude_scores(analysis, options.selection.norm)
        self._global: GlobalImitation | None = None
        self._outputs: OutputCache | bool | None = None   # None: not built yet; False: cannot be cached
        self.allocation: dict | None = None   # allocate=output: the stand-ins' held-out losses and the choice
        self.allocated: Allocation | None = None   # the allocation used (auto resolved; pipeline/budget.py)
        # docs/DESIGN.md, "Statistics": padding tokens stay out of every consumer's statistics
        self.token_mask = token_mask_input(analysis.model, options.calibration.token_mask_input)
        if self.token_mask:
            log.info("statistics leave out the padding tokens marked by input '%s'", self.token_mask)

    @property
    def output_loss(self) -> str | None:
        """The output loss the global methods used (None when none ran)."""
        return None if self._global is None else self._global.kind

    # ----- what the methods' problems ask of the pipeline ---------------------------------------------
    def baseline_scores(self, group: Group, method: str) -> np.ndarray:
        """Scores of a data-free criterion for the sequential pass (random draws from the run's stream)."""
        if method == "random":
            return self.rng.random(group.channels)
        return np.array([self.magnitude.get(c, 0.0) for c in group.classes.tolist()])

    def profile_scores(self, group: Group, method: str) -> np.ndarray:
        """Scores of a data-free criterion for the allocation's profile (random draws seeded per group)."""
        if method == "random":
            return np.random.default_rng((self.seed, group.id)).random(group.channels)
        return np.array([self.magnitude.get(c, 0.0) for c in group.classes.tolist()])

    def global_imitation(self) -> GlobalImitation:
        if self._global is None:
            self._global = GlobalImitation(self.analysis, self.cal, self.method.name, self.options.global_imitation,
                                           self.options.calibration)
        return self._global

    def collector(self, consumers) -> Collector:
        return Collector(consumers, self.options.calibration, self.seed, self.quiet, self.token_mask)

    # ----- the sequential pass -------------------------------------------------------------------------
    def consumers_of(self, group: Group) -> list[Consumer]:
        """The group's consumers; without `--residual-target` none imitates a residual sum."""
        consumers = consumers_of(self.analysis, group)
        if self.options.refit.residual_target:
            return consumers
        return [dataclasses.replace(c, residual=None) for c in consumers]

    def output_cache(self) -> OutputCache | None:
        """The original network's consumer outputs at the sampled positions, for every group's statistics (built
        once, on first use), or None when they cannot be cached (docs/DESIGN.md, "Statistics")."""
        if self._outputs is None:
            self._outputs = self._build_output_cache(visiting_order(self.analysis)) or False
        return self._outputs if isinstance(self._outputs, OutputCache) else None

    def _build_output_cache(self, groups: list[Group]) -> OutputCache | None:
        consumers: dict[int, Consumer] = {}
        for g in groups:
            try:
                consumers.update({c.node: c for c in self.consumers_of(g)})
            except NotSupported:
                continue
        shapes = {t.name: t.shape for t in self.analysis.graph.tensors().values()}
        o = self.options.calibration
        plan = OutputCache.plan(list(consumers.values()), shapes, o.max_positions, self.cal.size)
        if plan is None or not consumers:
            return None
        return OutputCache.build(self.cal, self.analysis.model, list(consumers.values()), shapes, plan,
                                 o.batch_size, o.max_positions, self.seed, self.token_mask)

    def run(self, counts: dict[int, int]) -> Selection:
        # the counts are final: the output-aware allocation's statistics, orders and re-fits on the original
        # network (pipeline/sensitivity.py) are not needed by the pass, and would stay in memory beside its own
        self.__dict__.pop("_sensitivity", None)
        order = [g for g in visiting_order(self.analysis) if g.id in counts]
        for g in tqdm(order, desc="groups", unit="group", disable=self.quiet or None):
            self._prune_group(g, counts[g.id])
        return self.sel

    def statistics(self, consumers: list[Consumer], keep: np.ndarray, gamma: np.ndarray, what: str) -> Collector:
        """The consumers' statistics: their inputs in the network as decided so far (`keep`, `gamma` and the
        re-fitted values; its masked reference), their targets from the original network."""
        masked = Rewriter(self.analysis, keep, gamma, masked=True, replace=self.sel.replace).run()
        col = self.collector(consumers)
        cache = self.output_cache()
        residual = [c for c in consumers if c.residual]
        streams = [str(c.residual) for c in residual]
        outputs = cache if cache is not None and all(cache.holds(c) for c in consumers) \
            else Tap(self.analysis.model, [c.output for c in consumers] + streams)
        # docs/DESIGN.md, "Residual targets": the kept output channels imitate the original residual sum
        roots = self.analysis.class_of
        residual_keep = {c.node: keep[roots[c.out_labels]] if c.out_labels is not None else np.ones(1, bool)
                         for c in residual}
        col.run(self.cal, Tap(masked, [c.input for c in consumers] + streams), outputs, what, residual_keep)
        return col

    def _prune_group(self, group: Group, k: int) -> None:
        if group.id in self.head_scores:
            self._keep_leading_dims(group, k)
            return
        keep, gamma = self.sel.class_arrays(self.analysis)
        try:
            consumers = self.consumers_of(group)
        except NotSupported as exc:
            method = self.method.fallback
            scores = self.baseline_scores(group, method)
            idx = ensure_segments(self.analysis, group, top_k(group, scores, k), scores)
            self.sel.kept[group.id], self.sel.gamma[group.id] = idx, np.ones(len(idx))
            self.results[group.id] = GroupResult(method, note=f"no statistics ({exc}); {method}, no re-fit")
            return
        col = self.statistics(consumers, keep, gamma, f"group {group.id}")
        residual = [c for c in consumers if c.residual]
        problem = LocalProblem(self, group, k, consumers, col, keep, gamma)
        cands = [self._completed(problem, cand) for cand in self.method.candidates(problem)]
        outcomes = [(cand, apply_refit(self.analysis, self.sel, self.dense, problem, cand.kept, cand.gamma,
                                       self.refit, self.options.refit.ridge)) for cand in cands]
        cand, out = outcomes[0]
        note = cand.note
        compared: list[dict] = []
        if len(outcomes) > 1:  # a composite method: the lower output loss on held-out data wins
            scored = sorted(((self._output_loss(group, o), c, o) for c, o in outcomes), key=lambda t: t[0])
            _, cand, out = scored[0]
            note = "; ".join(f"{c.method}: held-out output loss {v:.4g}" for v, c, _ in scored) + \
                f"; {cand.method} kept"
            compared = [{"method": c.method, "kept": o.kept.tolist(), "gamma": np.asarray(o.gamma).tolist(),
                         "held_out_output_loss": v} for v, c, o in scored]
        self.sel.kept[group.id], self.sel.gamma[group.id] = out.kept, out.gamma
        self.sel.replace.update(out.replace)
        self.dense.update(out.dense)
        self.fitted.append(group.id)
        short = [(c.name, col.stats["calib"][c.node].rows, len(c.labels)) for c in consumers
                 if col.stats["calib"][c.node].rows < len(c.labels)]
        if short:
            name, rows, feats = short[0]
            how = "re-fitted towards its weights with one scale per kept input (ridge inf: those scales alone)" \
                if self.refit == Refit.FULL else "the statistics are thin"   # refit.py: the same test of rows
            warning = (f"only {rows} calibration rows for the {feats} inputs of '{name}': {how}; give at least "
                       f"{feats} rows (samples x sampled positions) for a full re-fit")
            log.warning("group %d: %s", group.id, warning)
            note = "; ".join(x for x in (note, warning) if x)
        if out.ridge:
            note = "; ".join(x for x in (note, "ridge " + ", ".join(f"{k}: {v:g}" for k, v in out.ridge.items()))
                             if x)
        if residual:
            note = "; ".join(x for x in (note, "imitates the residual sum after " + ", ".join(c.name for c in residual))
                             if x)
        self.results[group.id] = GroupResult(self.method.label(cand.method), out.err_calib, out.err_holdout,
                                             cand.curve, note, compared)

    def _keep_leading_dims(self, group: Group, k: int) -> None:
        """A re-based Q·K dims group keeps its k dims of highest score (docs/DESIGN.md, "Dims within heads");
        its error is the share of the whitened score form's squared singular values dropped."""
        scores = self.head_scores[group.id]
        idx = ensure_segments(self.analysis, group, top_k(group, scores, k), scores)
        self.sel.kept[group.id], self.sel.gamma[group.id] = idx, np.ones(len(idx))
        err = float(1.0 - scores[idx].sum() / max(float(scores.sum()), 1e-300))
        self.results[group.id] = GroupResult(
            "leading-dims", err, None, [],
            f"Q·K dims re-based on the calibration data: kept the {len(idx)} leading dims of every head; "
            f"{err:.3g} of the whitened scores' energy dropped")

    def _completed(self, problem: LocalProblem, cand: Candidate) -> Candidate:
        """The candidate with exactly k channels, every segment kept, and γ re-fitted where it changed."""
        G, c, group = problem.G, problem.c, problem.group
        fixed = complete(group, cand.kept, problem.k, np.abs(c) / np.sqrt(np.maximum(np.diag(G), 1e-300)))
        fixed = ensure_segments(self.analysis, group, fixed, np.zeros(group.channels))
        idx, gam = cand.kept, cand.gamma
        if not np.array_equal(fixed, idx):
            idx, gam = fixed, greedy.ls_gamma(G, c, fixed)
        if self.refit == Refit.GAMMA:
            gam = greedy.ls_gamma(G, c, idx)
        return Candidate(cand.method, idx, gam, cand.curve, cand.note)

    def _output_loss(self, group: Group, out: Outcome) -> float:
        trial = Selection(dict(self.sel.kept), dict(self.sel.gamma), {**self.sel.replace, **out.replace})
        trial.kept[group.id], trial.gamma[group.id] = out.kept, out.gamma
        start = min(c.node for c in consumers_of(self.analysis, group))
        return self.global_imitation().output_loss(trial, held=True, start=start)
