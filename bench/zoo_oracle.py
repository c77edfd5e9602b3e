"""The test zoo at --flops 0.5: MACs before/after and the largest masked-reference error.

    python bench/zoo_oracle.py [--cache DIR] [--seeds 3] [--out bench/results/zoo_oracle.json]

For every zoo model and exporter: magnitude pruning to 50% MACs (MACs before/after), then random
selections with random γ (several seeds, batch 1 and 3) comparing the pruned graph with its
masked reference in ONNX Runtime; prints a table and writes JSON.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import tempfile

from onnxprune import api, load_model
from onnxprune.analysis import Analysis
from tests import zoo
from tests.helpers import oracle_error

ROOT = pathlib.Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", default=None)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "zoo_oracle.json"))
    args = ap.parse_args()
    cache = pathlib.Path(args.cache or tempfile.mkdtemp(prefix="zoo-"))
    rows = []
    for z in zoo.build_zoo(cache):
        model = load_model(z.path)
        _, report = api.prune(model, method="magnitude", flops=0.5)
        a = Analysis(model)
        worst = oracle_error(a, lambda batch, seed, z=z: zoo.random_input(z, batch, seed), range(args.seeds), (0.5,))
        rows.append({"model": z.name, "exporter": z.exporter, "macs_before": report.macs_before,
                     "macs_after": report.macs_after, "macs_ratio": report.macs_ratio,
                     "groups": len(a.groups), "prunable": len(a.prunable), "max_oracle_rel_err": worst})
        r = rows[-1]
        print(f"{r['model']:15s} {r['exporter']:9s} MACs {r['macs_before']:>9,} -> {r['macs_after']:>9,} "
              f"({r['macs_ratio']:.3f})  groups {r['prunable']}/{r['groups']}  oracle {worst:.1e}")
    print(f"largest oracle error: {max(r['max_oracle_rel_err'] for r in rows):.2e} over {len(rows)} graphs")
    pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(args.out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
