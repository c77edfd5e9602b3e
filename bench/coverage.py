"""Coverage of real-world graphs: what the analyzer can prune in each coverage-zoo graph, and whether
the rewriter stays exact there.

    python -m bench.coverage [--cache DIR] [--exporters ts11,ts13,ts17,dynamo18] [--names a,b]
                             [--out bench/results/coverage.json]
    python -m bench.coverage --exporter-zoo DIR [--names a,b] [--out bench/results/exporter_zoo.json]

The second form measures the tf2onnx / paddle2onnx graphs that `models/exporter_zoo.py` built in DIR (its
index.json): the same columns, plus how far ONNX Runtime is from the framework's own output, and MACs
reached by `keep_ratio=0.5` where the MACs count is 0 (graphs with dynamic H and W).

Per graph (model x exporter):
  channels_prunable      share of channels in unfrozen groups, over all groups
  channels_prunable_excl share over the groups that do not reach a graph output
  macs_prunable          share of MACs in nodes that touch at least one unfrozen group
  macs_reached           MACs fraction reached by prune(method="magnitude", flops=0.5), or, when 0.5
                         is unreachable, by prune at the lowest reachable fraction (flops_target says which)
  oracle_err             max relative error, pruned vs masked reference (random selection, random γ,
                         seeds 0 and 1, keep ratios 0.3 / 0.6, batches 1 and 3)
  keep_all_err           max relative error, keep-all pruned graph vs the original
  frozen                 frozen groups: channels, producers and the reasons (which node froze what)
Exporter failures are listed under "export_failures". Takes about a minute on 2 cores once the
exports are cached (models/cache/coverage; the first build adds about a minute).
"""
from __future__ import annotations

import argparse
import collections
import json
import pathlib
import sys
import time
import traceback

import numpy as np
import onnx

from models import coverage_zoo as cz
from models import exporter_zoo as ez
from onnxprune import api
from onnxprune.analysis import Analysis
from onnxprune.analysis.cost import macs
from onnxprune.errors import UserError
from onnxprune.graph import load_model
from onnxprune.rewrite import Rewriter
from onnxprune.selection import Selection, counts_for_ratio
from tests import helpers
from tests.helpers import rel_err, run

ROOT = pathlib.Path(__file__).resolve().parent.parent

DEFAULT_CACHE = ROOT / "models" / "cache" / "coverage"
DEFAULT_OUT = ROOT / "bench" / "results" / "coverage.json"
EXPORTER_OUT = ROOT / "bench" / "results" / "exporter_zoo.json"
OUTPUT_REASON = "reaches graph output"


def output_facing(group) -> bool:
    return any(OUTPUT_REASON in r for r in group.reasons)


def prunable_macs_share(a: Analysis) -> float:
    """Share of MACs in nodes whose cost depends on at least one unfrozen group."""
    live = {g.id for g in a.prunable}
    total = max(a.total_macs, 1)
    hit = 0
    for cost in a.costs:
        gids = {a.group_of_class.get(int(c)) for f in cost.factors for c in np.unique(a.class_of[f]).tolist()}
        if gids & live:
            hit += cost.macs
    return hit / total


def oracle_error(a: Analysis, cm, seeds=(0, 1), ratios=(0.3, 0.6)) -> float:
    """Pruned vs masked reference for random selections with random γ; also runs the checker."""
    return helpers.oracle_error(a, lambda batch, seed: cz.random_input(cm, batch, seed), seeds, ratios)


def keep_all_error(a: Analysis, model: onnx.ModelProto, cm) -> float:
    sel = Selection({g.id: np.arange(g.channels) for g in a.prunable},
                    {g.id: np.ones(g.channels) for g in a.prunable})
    keep, gamma = sel.class_arrays(a)
    pruned = Rewriter(a, keep, gamma).run()
    feeds = cz.random_input(cm, 3, 0)
    return rel_err(run(pruned, feeds), run(model, feeds))


def floor_fraction(a: Analysis) -> float:
    """Lowest MACs fraction a uniform ratio can reach (every prunable group at its minimum count)."""
    keep = np.ones(len(a.class_of), dtype=bool)
    for gid, n in counts_for_ratio(a, 0.0).items():
        keep[a.groups[gid].classes[n:]] = False
    return macs(a, keep) / max(a.total_macs, 1)


def reached(a: Analysis, model: onnx.ModelProto, target: float = 0.5) -> tuple[float, float, str | None]:
    """(target used, MACs fraction reached) by magnitude pruning at `target` or the lowest reachable."""
    floor = floor_fraction(a)
    use = target if floor <= target * 1.02 else min(1.0, floor * 1.0 + 1e-9)
    note = None if use == target else f"0.5 unreachable; lowest reachable {floor:.3f}"
    _, report = api.prune(model, method="magnitude", flops=use)
    return use, report.macs_ratio, note


def evaluate(cm) -> dict:
    row = {"name": cm.name, "exporter": cm.exporter, "file": cm.path.name}
    t0 = time.perf_counter()
    try:
        model = load_model(cm.path)
        a = Analysis(model)
    except Exception as exc:  # an analyzer crash is a finding, not a reason to stop the bench
        row["error"] = f"analysis: {type(exc).__name__}: {exc}"
        row["traceback"] = traceback.format_exc(limit=4)
        return row
    ch_all = sum(g.channels for g in a.groups)
    ch_live = sum(g.channels for g in a.prunable)
    ch_out = sum(g.channels for g in a.groups if output_facing(g))
    row.update(groups=len(a.groups), groups_prunable=len(a.prunable), channels=ch_all,
               channels_prunable=ch_live / max(ch_all, 1),
               channels_prunable_excl=ch_live / max(ch_all - ch_out, 1),
               macs=a.total_macs, macs_prunable=prunable_macs_share(a))
    frozen = []
    for g in a.groups:
        if g.frozen:
            frozen.append({"id": g.id, "channels": g.channels, "producers": g.producers, "reasons": g.reasons})
    row["frozen"] = frozen
    for key, fn in (("oracle_err", lambda: oracle_error(a, cm)),
                    ("keep_all_err", lambda: keep_all_error(a, model, cm))):
        try:
            row[key] = fn() if a.prunable else None
        except Exception as exc:
            row[key] = None
            row.setdefault("errors", []).append(f"{key}: {type(exc).__name__}: {str(exc)[:300]}")
    try:
        row["flops_target"], row["macs_reached"], note = reached(a, model)
        if note:
            row["macs_note"] = note
    except UserError as exc:
        row["flops_target"] = row["macs_reached"] = None
        row["macs_note"] = str(exc)
    except Exception as exc:
        row["flops_target"] = row["macs_reached"] = None
        row.setdefault("errors", []).append(f"prune: {type(exc).__name__}: {str(exc)[:300]}")
    row["seconds"] = round(time.perf_counter() - t0, 2)
    return row


def reason_summary(row) -> str:
    """Freeze reasons without the output-facing classifier group, counted by (op, reason)."""
    c = collections.Counter()
    for g in row.get("frozen", []):
        for r in g["reasons"]:
            if OUTPUT_REASON in r:
                continue
            where, _, why = r.partition(": ")
            op = where.split(" node ")[0]
            c[f"{op}: {why[:48]}"] += 1
    return "; ".join(f"{k} x{v}" for k, v in c.most_common()) or "-"


def fmt(x, pct=True):
    if x is None:
        return "-"
    return f"{100 * x:5.1f}%" if pct else f"{x:.1e}"


class ExporterGraph:
    """An exporter-zoo entry in the shape `evaluate` wants (name, exporter, path)."""

    def __init__(self, entry: dict, folder: pathlib.Path):
        self.entry, self.name, self.path = entry, entry["name"], folder / entry["file"]
        self.exporter = f"{entry['exporter']} {entry['exporter_version']}"


def evaluate_exporter(g: ExporterGraph) -> dict:
    """`evaluate`'s columns for one exporter-zoo graph, with random inputs in its own range."""
    feeds = lambda batch, seed: ez.random_input(g.entry, batch, seed)  # noqa: E731
    t0 = time.perf_counter()
    row = {"name": g.name, "exporter": g.exporter, "opset": g.entry["opset"], "file": g.path.name,
           "framework": f"{g.entry['framework']} {g.entry['framework_version']}"}
    try:
        model = load_model(g.path)
        ref = np.load(g.path.parent / g.entry["reference"])
        x = {g.entry["input"]["name"]: ref["input"]}
        row["ort_vs_framework"] = rel_err(run(model, x), [ref["output"].astype(np.float64)])
        a = Analysis(model)
    except Exception as exc:
        row["error"] = f"analysis: {type(exc).__name__}: {exc}"
        return row
    ch_all = sum(gr.channels for gr in a.groups)
    ch_out = sum(gr.channels for gr in a.groups if output_facing(gr))
    ch_live = sum(gr.channels for gr in a.prunable)
    row.update(groups=len(a.groups), groups_prunable=len(a.prunable), channels=ch_all,
               channels_prunable=ch_live / max(ch_all, 1), channels_prunable_excl=ch_live / max(ch_all - ch_out, 1),
               macs=a.total_macs, macs_prunable=prunable_macs_share(a) if a.total_macs else None,
               frozen=[{"id": gr.id, "channels": gr.channels, "producers": gr.producers[:4], "reasons": gr.reasons}
                       for gr in a.groups if gr.frozen])
    try:
        row["oracle_err"] = helpers.oracle_error(a, feeds) if a.prunable else None
        sel = Selection({gr.id: np.arange(gr.channels) for gr in a.prunable},
                        {gr.id: np.ones(gr.channels) for gr in a.prunable})
        keep, gamma = sel.class_arrays(a)
        row["keep_all_err"] = rel_err(run(Rewriter(a, keep, gamma).run(), x), run(model, x))
    except Exception as exc:
        row.setdefault("errors", []).append(f"oracle: {type(exc).__name__}: {str(exc)[:300]}")
    try:
        if a.total_macs:
            row["flops_target"], row["macs_reached"], note = reached(a, model)
            if note:
                row["macs_note"] = note
        else:
            _, report = api.prune(model, method="magnitude", keep_ratio=0.5)
            row["flops_target"], row["macs_reached"] = None, None
            row["macs_note"] = "MACs counted 0 (dynamic H and W); pruned with keep_ratio=0.5"
            row["params_reached"] = report.params_after / report.params_before
    except UserError as exc:
        row["flops_target"] = row["macs_reached"] = None
        row["macs_note"] = str(exc)
    except Exception as exc:
        row.setdefault("errors", []).append(f"prune: {type(exc).__name__}: {str(exc)[:300]}")
    row["seconds"] = round(time.perf_counter() - t0, 2)
    return row


def exporter_zoo_main(args) -> int:
    folder = pathlib.Path(args.exporter_zoo)
    index = ez.load_index(folder)
    if not index["graphs"]:
        print(f"{folder}: no index.json with graphs; build it with models/exporter_zoo.py")
        return 2
    names = set(args.names.split(",")) if args.names else None
    t0 = time.perf_counter()
    head = (f"{'graph':<34} {'exporter':<18} {'ch%':>6} {'ch%xo':>6} {'reach':>6} {'oracle':>8} {'keepall':>8} "
            f"{'ORT':>8}  frozen by (excluding the output-facing head)")
    print(head)
    print("-" * len(head))
    rows = []
    for entry in index["graphs"]:
        if names and entry["name"] not in names:
            continue
        row = evaluate_exporter(ExporterGraph(entry, folder))
        rows.append(row)
        if "error" in row:
            print(f"{row['name']:<34} {row['exporter']:<18} {row['error']}")
            continue
        print(f"{row['name']:<34} {row['exporter']:<18} {fmt(row['channels_prunable'])} "
              f"{fmt(row['channels_prunable_excl'])} {fmt(row.get('macs_reached'))} "
              f"{fmt(row.get('oracle_err'), False):>8} {fmt(row.get('keep_all_err'), False):>8} "
              f"{fmt(row.get('ort_vs_framework'), False):>8}  {reason_summary(row)}"
              + (f"  [{row['macs_note']}]" if row.get("macs_note") else "")
              + (f"  [{'; '.join(row['errors'])}]" if row.get("errors") else ""), flush=True)
    bad = [r for r in rows if "error" in r or r.get("errors") or (r.get("oracle_err") or 0) > 1e-4
           or (r.get("keep_all_err") or 0) > 1e-5]
    total = time.perf_counter() - t0
    print(f"\n{len(rows)} graphs, {len(index['failures'])} export failures, {len(bad)} with errors or oracle "
          f"violations; {total:.0f}s")
    out = pathlib.Path(args.out or EXPORTER_OUT)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"graphs": rows, "export_failures": {f["name"]: f["error"] for f in index["failures"]},
               "build_times": index.get("build_times", {}), "seconds": round(total, 1)}
    out.write_text(json.dumps(payload, indent=1, default=lambda o: o.item() if hasattr(o, "item") else str(o)))
    print(f"wrote {out}")
    return 1 if bad else 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", default=str(DEFAULT_CACHE))
    ap.add_argument("--exporters", default=",".join(cz.EXPORTERS))
    ap.add_argument("--names", default=None)
    ap.add_argument("--out", default=None)
    ap.add_argument("--exporter-zoo", default=None, metavar="DIR",
                    help="measure the tf2onnx / paddle2onnx graphs built by models/exporter_zoo.py in DIR")
    args = ap.parse_args(argv)
    if args.exporter_zoo:
        return exporter_zoo_main(args)
    args.out = args.out or str(DEFAULT_OUT)
    t0 = time.perf_counter()
    zoo = cz.build_coverage_zoo(args.cache, tuple(args.exporters.split(",")),
                                args.names.split(",") if args.names else None)
    t_build = time.perf_counter() - t0
    rows = []
    head = (f"{'graph':<16} {'exporter':<8} {'ch%':>6} {'ch%xo':>6} {'MACs%':>6} {'reach':>6} "
            f"{'oracle':>8} {'keepall':>8}  frozen by (excluding the output-facing head)")
    print(head)
    print("-" * len(head))
    for cm in zoo:
        row = evaluate(cm)
        rows.append(row)
        if "error" in row:
            print(f"{cm.name:<16} {cm.exporter:<8} {row['error']}")
            continue
        print(f"{cm.name:<16} {cm.exporter:<8} {fmt(row['channels_prunable'])} {fmt(row['channels_prunable_excl'])} "
              f"{fmt(row['macs_prunable'])} {fmt(row['macs_reached'])} {fmt(row['oracle_err'], False):>8} "
              f"{fmt(row['keep_all_err'], False):>8}  {reason_summary(row)}"
              + (f"  [{'; '.join(row['errors'])}]" if row.get("errors") else ""))
    bad = [r for r in rows if "error" in r or r.get("errors") or (r.get("oracle_err") or 0) > 1e-4
           or (r.get("keep_all_err") or 0) > 1e-5]
    total = time.perf_counter() - t0
    print(f"\n{len(rows)} graphs, {len(cz.EXPORT_FAILURES)} export failures, {len(bad)} with errors "
          f"or oracle violations; {total:.0f}s ({t_build:.0f}s building the zoo)")
    for k, v in sorted(cz.EXPORT_FAILURES.items()):
        print(f"export failed {k}: {v[:160]}")
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"graphs": rows, "export_failures": {f"{n}/{e}": v for (n, e), v in cz.EXPORT_FAILURES.items()},
               "seconds": round(total, 1)}
    out.write_text(json.dumps(payload, indent=1, default=lambda o: o.item() if hasattr(o, "item") else str(o)))
    print(f"wrote {out}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
