"""Does more calibration data help on ImageNet? MobileNetV2 pruned by the default at one MACs level, calibrated
on fold A's photos alone and on those plus half of fold A's evaluation classes, both evaluated on the other half.

    python -m bench.imagenet_scaling [--flops 0.7] [--augment 3] [--out bench/results/imagenet_scaling.json]

Fold A's evaluation classes (≡ 2 mod 4, `bench/lib/imagenet_sample.py`) are split by class: E1 holds the classes
c with c // 4 even, E2 the others. Row `fold A` calibrates on fold A's 250 photos (classes ≡ 0 mod 4), row
`fold A + E1` on those and E1's (375 photos); both use the default pipeline with `--augment`, `--round-to 1`,
and are evaluated on E2's centre crops (top-1 with labels, agreement with the original). No labels are used in
pruning. Each row prunes in this process, one after the other; wall time and the load average are recorded.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

from bench.imagenet_sample import evaluate
from bench.lib import imagenet_sample as S
from bench.lib.common import format_table, loadavg, machine_info, write_json
from bench.lib.imagenet import logits, model_path
from onnxprune import prune, save_model

OUT = os.path.join("bench", "results", "imagenet_scaling.json")


def halves(items):
    """(E1, E2): the classes c with c // 4 even, and the others."""
    return [x for x in items if (x[0] // 4) % 2 == 0], [x for x in items if (x[0] // 4) % 2 == 1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flops", type=float, default=0.7)
    ap.add_argument("--augment", type=int, default=3)
    ap.add_argument("--out", default=OUT)
    args = ap.parse_args(argv)
    t0 = time.time()
    cal, ev = S.split("A")
    e1, e2 = halves(ev)
    x, y = S.eval_data(e2)
    reference = logits(model_path(), x)
    doc = {"machine": machine_info("2 CPU cores shared with other jobs: times vary with the load"),
           "flops": args.flops, "augment": args.augment, "eval_photos": len(e2), "results": []}
    for name, items in (("fold A", cal), ("fold A + E1", sorted(cal + e1))):
        links = S.link_folder(items)
        load0, w0 = loadavg(), time.time()
        pruned, rep = prune(model_path(), links.name, flops=args.flops, preprocess="imagenet", augment=args.augment,
                            round_to=1, quiet=True)
        wall = time.time() - w0
        rec = {"row": name, "photos": len(items), "samples": rep.calibration_samples, "macs_ratio": rep.macs_ratio,
               "prune_wall_s": wall, "loadavg_before": load0}
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "pruned.onnx")
            save_model(pruned, path)
            rec.update(evaluate(path, {"eval": (x, y, reference)}))  # top-1/5 with labels, agreement, KL
        links.cleanup()
        doc["results"].append(rec)
        print(f"{name}: {len(items)} photos, top-1 {rec['top1']:.1%} (original {rec['top1_original']:.1%}), "
              f"agreement {rec['agreement']:.1%}, prune {wall:.0f} s", flush=True)
        write_json(args.out, doc, time.time() - t0)
    print(format_table(["calibration", "photos", "top-1 %", "original %", "agreement %", "prune s"],
                       [[r["row"], r["photos"], f"{100 * r['top1']:.1f}", f"{100 * r['top1_original']:.1f}",
                         f"{100 * r['agreement']:.1f}", f"{r['prune_wall_s']:.0f}"] for r in doc["results"]]))
    write_json(args.out, doc, time.time() - t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
