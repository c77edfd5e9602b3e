"""The re-fit sweep (docs/DESIGN.md, "Re-fit sweep"): after the sequential pass has decided every group, each
group's consumers are re-fitted once more, in the same order, with the kept channels as decided, on the
network as finally pruned.

In the sequential pass a consumer is re-fitted on its inputs as they are when its group is decided. Groups
decided later still change some of those inputs: a residual stream's consumers are re-fitted when the stream's
group is decided, before the blocks that add to the stream further on; the re-fits of later groups move what
flows on. The sweep fits each consumer to the inputs it will see, the re-fits before it in the sweep applied.
The swept model is kept only if its output loss on the held-out split is lower than the model before the sweep.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tqdm import tqdm

from ..rewrite import Rewriter
from .held_out import GatedRecord, held_out_batches
from .problem import LocalProblem
from .refit import apply_refit

if TYPE_CHECKING:
    from .pruner import GreedyPruner

log = logging.getLogger("onnxprune")


@dataclass
class RefitSweepRecord(GatedRecord):
    """What the re-fit sweep did (the report's `refit_sweep`)."""
    groups: int = 0                   # groups whose consumers were re-fitted again
    seconds: float = 0.0


def refit_sweep(pruner: GreedyPruner, loss_kind: str, quiet: bool = True) -> RefitSweepRecord:
    """Re-fit the consumers of every group the pruner re-fitted (`pruner.fitted`, in that order) on the network
    as decided, in place on `pruner.sel` and `pruner.dense`; undone when the held-out output loss does not fall."""
    t0 = time.perf_counter()
    rec = RefitSweepRecord()
    analysis, sel = pruner.analysis, pruner.sel
    before_replace, before_dense = dict(sel.replace), dict(pruner.dense)
    ridge = pruner.options.refit.ridge
    groups = {g.id: g for g in analysis.groups}
    for gid in tqdm(pruner.fitted, desc="re-fit sweep", unit="group", disable=quiet or None):
        group = groups[gid]
        consumers = pruner.consumers_of(group)
        keep, gamma = sel.class_arrays(analysis)
        col = pruner.statistics(consumers, keep, gamma, f"re-fit sweep, group {gid}")
        problem = LocalProblem(pruner, group, len(sel.kept[gid]), consumers, col, keep, gamma, constrained=False)
        out = apply_refit(analysis, sel, pruner.dense, problem, sel.kept[gid], sel.gamma[gid], pruner.refit, ridge)
        sel.replace.update(out.replace)
        pruner.dense.update(out.dense)
        rec.groups += 1
    if not rec.groups:
        rec.why = "no group was re-fitted"
    else:
        keep, gamma = sel.class_arrays(analysis)
        plain = Rewriter(analysis, keep, gamma, replace=before_replace).run()
        swept = Rewriter(analysis, keep, gamma, replace=sel.replace).run()
        if not rec.judge(analysis.model, plain, swept,
                         held_out_batches(pruner.cal, pruner.options.calibration.batch_size), loss_kind):
            sel.replace.clear()
            sel.replace.update(before_replace)
            pruner.dense.clear()
            pruner.dense.update(before_dense)
    rec.seconds = time.perf_counter() - t0
    log.info("re-fit sweep: %d groups, held-out output loss %s -> %s, %s (%.1f s)", rec.groups,
             rec.held_out_loss_before, rec.held_out_loss_after, "applied" if rec.applied else "not applied",
             rec.seconds)
    return rec
