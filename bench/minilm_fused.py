"""all-MiniLM-L6-v2 fused by ONNX Runtime's transformer optimizer, then pruned (docs/DESIGN.md, "ONNX Runtime's
fused transformer ops").

    python -m bench.minilm_fused [--targets 0.7,0.5] [--calib 512] [--eval 512] [--repeats 30]
                                 [--out bench/results/minilm_fused.json]

The TorchScript export of models/minilm.py (bench/minilm.py's model) is fused by
`onnxruntime.transformers.optimizer.optimize_model(model_type="bert")`: EmbedLayerNormalization, Attention (Q, K
and V in one weight, the heads inside), SkipLayerNormalization, BiasGelu. Only the six MLP widths can shrink
there (63% of the MACs; the fused heads freeze). Per target (a fraction of the fused model's MACs), the
default pipeline (`onnxprune.prune(model, calib, flops=target, round_to=1)`) on `--calib` sentences of
models/text_corpus.py's "calib" split; quality on `--eval` sentences of the disjoint "eval" split (mean cosine
similarity of the embeddings, nearest-neighbour agreement), the prune's wall time, and ONNX Runtime CPU latency
at batch 32 x 128 tokens of the fused original and the pruned model, timed interleaved.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from bench.lib.common import loadavg, machine_info, write_json
from bench.minilm import embed, latency, model_path
from models import minilm
from models.text_corpus import sentences
from onnxprune import load_model, prune
from onnxprune.report.evaluate import embedding_metrics

OUT = os.path.join("bench", "results", "minilm_fused.json")


def fused_path() -> str:
    """The fused model beside the export it is made from (built once)."""
    path = os.path.join(minilm.OUT_DIR, "minilm_ts17_ort_fused.onnx")
    if not os.path.exists(path):
        from onnxruntime.transformers import optimizer
        c = minilm.load_minilm().config
        optimizer.optimize_model(model_path("ts17"), model_type="bert", num_heads=c.heads, hidden_size=c.hidden) \
            .save_model_to_file(path)
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--targets", default="0.7,0.5")
    ap.add_argument("--calib", type=int, default=512)
    ap.add_argument("--eval", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--out", default=OUT)
    args = ap.parse_args(argv)
    t0 = time.time()
    path = fused_path()
    model = load_model(path)
    fused_ops = sorted({f"{n.domain}::{n.op_type}" for n in model.graph.node if n.domain})
    calib = minilm.encode_texts(sentences("calib", args.calib))
    evaluation = minilm.encode_texts(sentences("eval", args.eval))
    reference = embed(model, evaluation)
    doc = {"machine": machine_info(), "model": os.path.basename(path), "fused_ops": fused_ops,
           "calib_sentences": args.calib, "eval_sentences": args.eval, "results": []}
    for target in (float(t) for t in args.targets.split(",")):
        load0, w0 = loadavg(), time.time()
        pruned, report = prune(path, calib, flops=target, round_to=1)
        rec = {"flops_target": target, "prune_wall_s": time.time() - w0, "loadavg_before": load0,
               "loadavg_after": loadavg(), "macs_ratio": report.macs_ratio,
               "kept": {f"{g.kind} {g.id}": g.kept_count for g in report.groups if not g.frozen},
               "allocation": report.allocation, "refit_sweep": report.refit_sweep,
               "bias_correction": report.bias_correction}
        rec.update(embedding_metrics(reference, embed(pruned, evaluation)))
        rec["latency"] = latency(model, pruned, args.repeats)
        doc["results"].append(rec)
        print(f"{target:.0%}: MACs {rec['macs_ratio']:.3f}, cosine {rec['mean_cosine']:.4f}, "
              f"NN {100 * rec['nn_agreement']:.1f}%, prune {rec['prune_wall_s']:.0f} s, latency "
              f"{rec['latency']['original']['median_ms']:.0f} -> {rec['latency']['pruned']['median_ms']:.0f} ms "
              f"({rec['latency']['speedup_paired']:.2f}x)", flush=True)
    doc["total_s"] = time.time() - t0
    write_json(args.out, doc, doc["total_s"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
