"""all-MiniLM-L6-v2 pruned to a share of its MACs without finetuning: attention heads and MLP widths.

    python -m bench.minilm [--targets 0.5,0.7] [--rows all] [--calib 512] [--eval 512]
                           [--exporter ts17] [--global-samples 32] [--out bench/results/minilm.json]

The pretrained sentence encoder (models/minilm.py, exported at 128 tokens) is calibrated on `--calib`
sentences of models/text_corpus.py's "calib" split and evaluated on `--eval` sentences of its disjoint
"eval" split. Per target (a fraction of the encoder's MACs) and row, side by side in one run:

  magnitude              L1 norm of the consumers' input slices, no re-fit (no data)
  magnitude+full         the same channels, consumers re-fitted by ridge least squares
  greedy-local+full      greedy selection on the local statistics, full re-fit, every group pruned by the same
                         share (--allocate uniform, the default before auto)
  greedy-combined+full   per group, greedy-local or greedy-taylor, whichever imitates the embeddings better
                         on held-out sentences (output loss: MSE, chosen automatically; --global-samples)
  heads-only             greedy-local+full pruning attention heads only (--group-kind heads)
  mlp-only               greedy-local+full pruning the MLP widths only (--group-kind channels)
  output-allocated       the default pipeline before --attention auto (attention heads; --allocate auto is
                         output with data): greedy-local+full with the budget shared among heads and MLP
                         widths by each group's measured effect on the
                         embeddings (--allocate output, MSE output loss), with residual targets (the attention
                         output projections and second MLP MatMuls imitate the residual sums)
  output-allocated, no residual targets  the same with --no-residual-target (the default before them)
  output-allocated+distill  the same without residual targets, then label-free distillation of the
                         embeddings (--distill, MSE, early stopping on the held-out calibration sentences)
  default+distill        the default (with residual targets), then the same distillation
  default-1000-sentences  the default calibrated on 1000 sentences (the issue's limit) instead of --calib
  attention-dims         the default (--attention auto reads MiniLM as dims; given as --attention dims): the
                         dims within every head are the groups (Q·K dims re-based on the calibration data
                         and kept by their singular values, V dims chosen greedily with the output
                         projection re-fitted) instead of whole heads
  attention-dims-1000-sentences  the same calibrated on 1000 sentences
  attention-dims-no-refit-sweep  attention-dims without the re-fit sweep (--no-refit-sweep), which re-fits
                         every group's consumers once more on the network as finally pruned
  attention-dims-no-bias-correction  the same without the bias correction either (--no-bias-correction),
                         which shifts every Linear layer's bias to the original's mean on the real tokens

Every row but the default and magnitude runs without residual targets (residual_target=False), every row
but the three attention-dims rows above without the bias correction, and every row but attention-dims and
attention-dims-1000-sentences without the re-fit sweep, as they were measured before them.

All rows use --round-to 1 (heads of 32 are multiples of 8 at any count; round-to auto's latency probe
is not part of these rows), and once, the issue's starting point: the six MLP widths halved
(--keep-ratio 0.5 --group-kind channels, about 68% of the MACs) by greedy-local+full with the padding
tokens in the statistics (--token-mask-input '') and without them.

Quality: mean cosine similarity between the original's and the pruned model's embeddings of each
eval sentence, and nearest-neighbour agreement (each sentence's nearest other eval sentence by cosine,
in both spaces). Cost: wall and process CPU seconds of each prune (ONNX Runtime and torch threads
included) and the load average around it (the machine is shared). Latency: ONNX Runtime CPU, batch 32
x 128 tokens, original and the model of each LATENCY_ROWS row (greedy-local+full and the default) of each
target, timed interleaved. A target a row cannot reach (heads alone are ~37% of the MACs) is recorded with
the reason. Rows of an earlier run in --out that this run does not repeat (same target and row) are kept,
marked with their own date. --rows is a comma-separated list of row names (names that hold a comma, such as
"output-allocated, no residual targets", are recognised whole).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from bench.lib.common import format_table, loadavg, machine_info, make_session, summarize, time_interleaved, write_json
from models import minilm
from models.text_corpus import sentences
from onnxprune import prune, save_model
from onnxprune.errors import UserError
from onnxprune.report.evaluate import embedding_metrics

# residual_target=False where a row was measured before residual targets (docs/DESIGN.md, "Residual targets")
_BEFORE = dict(residual_target=False)
# attention="heads" where a row was measured before --attention auto (the default since, which reads MiniLM's
# blocks as dims: the attention-dims rows)
_HEADS = dict(attention="heads")
ROWS = {
    "magnitude": dict(method="magnitude", refit="none", data=False, **_HEADS),
    # allocate="uniform" where it was the library default when these rows were measured (before auto)
    "magnitude+full": dict(method="magnitude", refit="full", allocate="uniform", **_BEFORE, **_HEADS),
    "greedy-local+full": dict(method="greedy-local", refit="full", allocate="uniform", **_BEFORE, **_HEADS),
    "greedy-combined+full": dict(method="greedy-combined", refit="full", allocate="uniform", **_BEFORE, **_HEADS),
    "heads-only": dict(method="greedy-local", refit="full", group_kind="heads", allocate="uniform", **_BEFORE,
                       **_HEADS),
    "mlp-only": dict(method="greedy-local", refit="full", group_kind="channels", allocate="uniform", **_BEFORE,
                     **_HEADS),
    # the library default before --attention auto
    "output-allocated": dict(method="greedy-local", refit="full", allocate="output", **_HEADS),
    "output-allocated, no residual targets": dict(method="greedy-local", refit="full", allocate="output",
                                                  **_BEFORE, **_HEADS),
    "output-allocated+distill": dict(method="greedy-local", refit="full", allocate="output", distill=True,
                                     **_BEFORE, **_HEADS),
    "default+distill": dict(method="greedy-local", refit="full", allocate="output", distill=True, **_HEADS),
    # the default on the largest calibration set (the rows above use --calib)
    "default-1000-sentences": dict(method="greedy-local", refit="full", allocate="output", calib=1000, **_HEADS),
    # the dims within heads as groups (Q·K dims re-based, V dims greedy) instead of heads: what the default
    # (--attention auto) does on MiniLM, whose every block's dims prune
    "attention-dims": dict(method="greedy-local", refit="full", allocate="output", attention="dims"),
    "attention-dims-1000-sentences": dict(method="greedy-local", refit="full", allocate="output", attention="dims",
                                          calib=1000),
    # the default without the re-fit sweep (the attention-dims rows before it)
    "attention-dims-no-refit-sweep": dict(method="greedy-local", refit="full", allocate="output",
                                          attention="dims", refit_sweep=False),
    # the default without the re-fit sweep or the bias correction of its Linear layers
    "attention-dims-no-bias-correction": dict(method="greedy-local", refit="full", allocate="output",
                                              attention="dims", refit_sweep=False, bias_correction=False),
}
# the starting point, run once: the six MLP widths halved (about 68% of the MACs), with padding
# tokens in the statistics (as before they were left out) and without
HALF_MLP = {
    "mlp-half, padding in statistics": dict(method="greedy-local", refit="full", group_kind="channels",
                                             token_mask_input="", **_BEFORE, **_HEADS),
    "mlp-half": dict(method="greedy-local", refit="full", group_kind="channels", **_BEFORE, **_HEADS),
}
# the rows with the bias correction (the default): every other row was measured before it corrected MatMul + Add
# biases, and keeps its meaning without it
BIAS_CORRECTED = ("attention-dims", "attention-dims-1000-sentences", "attention-dims-no-refit-sweep")
# the rows with the re-fit sweep (the default); the others were measured before it
SWEPT = ("attention-dims", "attention-dims-1000-sentences")
for _name, _row in {**ROWS, **HALF_MLP}.items():
    if _name not in BIAS_CORRECTED:
        _row.setdefault("bias_correction", False)
    if _name not in SWEPT:
        _row.setdefault("refit_sweep", False)
OUT = os.path.join("bench", "results", "minilm.json")
# rows whose models are timed; latency records written before the default was timed have no "row" and are
# greedy-local+full's
LATENCY_ROWS = ("greedy-local+full", "output-allocated", "attention-dims")


def model_path(exporter: str) -> str:
    path = os.path.join(minilm.OUT_DIR, f"minilm_{exporter}.onnx")
    if not os.path.exists(path):
        os.makedirs(minilm.OUT_DIR, exist_ok=True)
        minilm.export(minilm.load_minilm(), path, exporter)
    return path


def embed(model, feeds: dict, batch: int = 64) -> np.ndarray:
    sess = make_session(model)
    n = len(feeds["input_ids"])
    return np.concatenate([sess.run(["embedding"], {k: v[i:i + batch] for k, v in feeds.items()})[0]
                           for i in range(0, n, batch)])


def latency(original, pruned, repeats: int) -> dict:
    feeds = minilm.encode_texts(sentences("eval", 32))
    a, b = make_session(original), make_session(pruned)
    times = time_interleaved({"original": lambda: a.run(None, feeds), "pruned": lambda: b.run(None, feeds)}, repeats)
    ratio = times["original"] / times["pruned"]
    return {"batch": 32, "tokens": minilm.SEQ_LEN, "original": summarize(times["original"]),
            "pruned": summarize(times["pruned"]), "speedup_paired": float(np.median(ratio))}


def row_names(arg: str) -> list[str]:
    """The row names in a comma-separated --rows value, longest name first where one holds a comma."""
    pieces, names, i = arg.split(","), [], 0
    while i < len(pieces):
        j = next((j for j in range(len(pieces), i, -1) if ",".join(pieces[i:j]).strip() in ROWS), None)
        if j is None:
            raise SystemExit(f"--rows: unknown row {pieces[i].strip()!r}; rows: {'; '.join(ROWS)}")
        names.append(",".join(pieces[i:j]).strip())
        i = j
    return names


def _earlier(out: str, targets: str, rows: str, half_mlp: bool) -> tuple[list, list]:
    """The results (and latencies) of an earlier run in `out` that this run does not repeat."""
    if not os.path.exists(out):
        return [], []
    import json
    with open(out) as f:
        old = json.load(f)
    date = old.get("machine", {}).get("date")
    again = {(float(t), r) for t in targets.split(",") for r in row_names(rows)} | \
        ({(None, r) for r in HALF_MLP} if half_mlp else set())
    keep = [{"date": date, **r} for r in old.get("results", []) if (r["flops_target"], r["row"]) not in again]
    lat = [{"date": date, "row": LATENCY_ROWS[0], **r} for r in old.get("latency", [])]
    return keep, [r for r in lat if (r["flops_target"], r["row"]) not in again]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets", default="0.5,0.7")
    ap.add_argument("--rows", default=",".join(ROWS))
    ap.add_argument("--calib", type=int, default=512)
    ap.add_argument("--eval", type=int, default=512)
    ap.add_argument("--exporter", default="ts17", choices=minilm.EXPORTERS)
    ap.add_argument("--global-samples", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=20, help="latency rounds")
    ap.add_argument("--no-half-mlp", dest="half_mlp", action="store_false", help="skip the MLP-halved rows")
    ap.add_argument("--out", default=OUT)
    args = ap.parse_args(argv)
    t0 = time.time()
    path = model_path(args.exporter)
    calib = minilm.encode_texts(sentences("calib", args.calib))
    evaluation = minilm.encode_texts(sentences("eval", args.eval))
    reference = embed(path, evaluation)
    doc = {"machine": machine_info("2 CPU cores shared with other jobs: times vary with the load"),
           "model": os.path.basename(path), "exporter": args.exporter, "calib_sentences": args.calib,
           "eval_sentences": args.eval, "tokens": minilm.SEQ_LEN,
           "calib_real_tokens_mean": float(calib["attention_mask"].sum(1).mean()),
           "global_samples": args.global_samples, "results": [], "latency": []}
    doc["results"], doc["latency"] = _earlier(args.out, args.targets, args.rows, args.half_mlp)
    plan = [(None, name, HALF_MLP[name]) for name in HALF_MLP if args.half_mlp] + \
        [(float(t), name, ROWS[name]) for t in args.targets.split(",") for name in row_names(args.rows)]
    for target, name, row in plan:
        spec = dict(row)
        n_calib = spec.pop("calib", args.calib)
        data = (calib if n_calib == args.calib else minilm.encode_texts(sentences("calib", n_calib))) \
            if spec.pop("data", True) else None
        extra = {"global_samples": args.global_samples} if "combined" in spec["method"] else {}
        spec.setdefault("round_to", 1)
        rec = {"row": name, "flops_target": target, "calib_sentences": n_calib if data is not None else 0,
               **{k: v for k, v in spec.items()}}
        goal = {"flops": target} if target is not None else {"keep_ratio": 0.5}
        load0, w0, c0 = loadavg(), time.time(), time.process_time()
        try:
            pruned, report = prune(path, data, **goal, **spec, **extra)
        except UserError as exc:
            rec["error"] = str(exc)
            print(f"{target} {name}: {exc}", flush=True)
            doc["results"].append(rec)
            continue
        rec.update(prune_wall_s=time.time() - w0, prune_cpu_s=time.process_time() - c0, loadavg_before=load0,
                   loadavg_after=loadavg(), macs_ratio=report.macs_ratio,
                   params_ratio=report.params_after / report.params_before, token_mask=report.token_mask,
                   output_loss=report.output_loss,
                   kept={f"{g.kind} {g.id}": g.kept_count for g in report.groups if not g.frozen},
                   winners={g.id: g.method for g in report.groups if not g.frozen and g.candidates},
                   distill=report.distill, bias_correction=report.bias_correction,
                   refit_sweep=report.refit_sweep, date=doc["machine"]["date"])
        rec.update(embedding_metrics(reference, embed(pruned, evaluation)))
        doc["results"].append(rec)
        print(f"{target} {name}: MACs {rec['macs_ratio']:.3f}, cosine {rec['mean_cosine']:.4f}, "
              f"NN {rec['nn_agreement']:.1%}, prune {rec['prune_wall_s']:.0f}s wall {rec['prune_cpu_s']:.0f}s cpu",
              flush=True)
        if name in LATENCY_ROWS and target is not None:
            tmp = os.path.join(minilm.OUT_DIR, f"pruned_{int(100 * target)}.onnx")
            save_model(pruned, tmp)
            lat = {"flops_target": target, "row": name, "macs_ratio": report.macs_ratio,
                   **latency(path, tmp, args.repeats)}
            doc["latency"].append(lat)
            print(f"  latency batch 32: {lat['original']['median_ms']:.0f} ms -> "
                  f"{lat['pruned']['median_ms']:.0f} ms ({lat['speedup_paired']:.2f}x)", flush=True)
        write_json(args.out, doc, time.time() - t0)
    rows = [[f"{r['flops_target']:.0%}" if r["flops_target"] else "-", r["row"],
             f"{r.get('macs_ratio', float('nan')):.3f}",
             f"{r['mean_cosine']:.4f}" if "mean_cosine" in r else "-",
             f"{100 * r['nn_agreement']:.1f}" if "nn_agreement" in r else "-",
             f"{r['prune_wall_s']:.0f}" if "prune_wall_s" in r else "-",
             f"{r['prune_cpu_s']:.0f}" if "prune_cpu_s" in r else r.get("error", "")[:60]]
            for r in doc["results"]]
    print(format_table(["target", "row", "MACs", "mean cos", "NN agree %", "wall s", "cpu s"], rows))
    doc["total_s"] = time.time() - t0
    write_json(args.out, doc, doc["total_s"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
