"""Analysis time of nested `If`s (issue 16, item 17): linear in the depth.

    python -m bench.nested_if [--depths 2,4,...] [--old-max 12] [--out bench/results/nested_if.json]

For each depth and condition (`constant`: a Constant node; `shape`: Equal(Shape(x)[0], 1) with a static
batch of 1), the time of `Analysis` on `tests/patterns.nested_ifs(depth, condition)`, and side by side the
time of what analysis ran before on the same model, ONNX Runtime's symbolic shape inference (it copies the
taken branch of an If it can decide over the other and infers both: twice the work per level), up to
`--old-max` levels.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import pathlib
import sys
import time

from onnxprune.analysis import Analysis
from tests import patterns

ROOT = pathlib.Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "bench" / "results" / "nested_if.json"


def _ssi(model) -> float:
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        SymbolicShapeInference.infer_shapes(model, auto_merge=True, guess_output_rank=True)
    return time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--depths", default="2,4,6,8,10,12,16,20,30")
    ap.add_argument("--old-max", type=int, default=12)
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    args = ap.parse_args(argv)
    rows = []
    Analysis(patterns.nested_ifs(2, "constant"))  # imports and ONNX Runtime's first session out of the timings
    print(f"{'condition':<9} {'depth':>5} {'analysis s':>11} {'symbolic inference s':>21} {'ratio':>7}")
    for condition in ("constant", "shape"):
        for depth in (int(d) for d in args.depths.split(",")):
            model = patterns.nested_ifs(depth, condition)
            t0 = time.perf_counter()
            Analysis(model)
            new = time.perf_counter() - t0
            old = _ssi(model) if depth <= args.old_max else None
            rows.append({"condition": condition, "depth": depth, "analysis_s": round(new, 4),
                         "symbolic_shape_inference_s": None if old is None else round(old, 4)})
            ratio = f"{old / new:7.1f}" if old is not None else "      -"
            print(f"{condition:<9} {depth:>5} {new:>11.3f} {'-' if old is None else f'{old:.3f}':>21} {ratio}",
                  flush=True)
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
