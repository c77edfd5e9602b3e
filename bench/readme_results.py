"""Write the README's "Results" section from the benchmark JSON (no hand-copied numbers).

    python bench/readme_results.py        # rewrites the text between the RESULTS markers in README.md
"""
from __future__ import annotations

import json
import pathlib

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
BEGIN, END = "<!-- RESULTS:BEGIN (bench/readme_results.py) -->", "<!-- RESULTS:END -->"


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _load(name: str):
    path = RESULTS / name
    return json.loads(path.read_text()) if path.exists() else None


def _when(data) -> str:
    """", started 2026-11-25 16:41 UTC" from a bench JSON's machine record, if it has one."""
    date = (data.get("machine") or {}).get("date")
    return f", started {date[:16].replace('T', ' ')} UTC" if date else ""


def quality_section(data, title: str) -> str:
    if not data:
        return ""
    out = [f"### {title}", "",
           f"Test accuracy without finetuning, Fashion-MNIST (`{data.get('test')}`), calibrated on "
           f"`{data.get('calibration')}`; one run (`bench/results/{data['_file']}`{_when(data)}), "
           f"{data['total_s'] / 60:.0f} min on {data['machine'].get('cores')} shared CPU cores"
           + (f"; the greedy-omp rows in a second run (`bench/results/quality_omp.json`, "
              f"{data['omp_total_s'] / 60:.0f} min)" if data.get("omp_total_s") else "") + ".", ""]
    for model in dict.fromkeys(r["model"] for r in data["results"]):
        rows = [dict(r, row=r.get("label") or f"{r['method']}+{r['refit']} ({r['allocate'] or 'uniform'})")
                for r in data["results"] if r["model"] == model and "error" not in r]
        levels = sorted({r["flops"] for r in rows}, reverse=True)
        names = list(dict.fromkeys(r["row"] for r in rows))
        acc = {(r["row"], r["flops"]): r for r in rows}
        original = rows[0]["accuracy_original"] if rows else None
        body = [[n] + [f"{100 * acc[(n, f)]['accuracy_pruned']:.2f}" if (n, f) in acc else "-" for f in levels]
                for n in names]
        out += [f"**{model}** (original {100 * original:.2f}%), accuracy % at MACs kept:", "",
                _table(["method+refit (allocation)"] + [f"{f:.0%}" for f in levels], body), ""]
        plot = (data.get("plots") or {}).get(model)
        if plot:
            out += [f"![{model}]({pathlib.Path(plot).as_posix()})", ""]
    cost = [c for c in data.get("cost", []) if "error" not in c]
    if cost:
        out += ["Cost of `greedy-local+full` at 50% MACs on the ResNet (fresh process per run):", "",
                _table(["allocation", "calibration images", "wall s", "peak RSS MB"],
                       [[c.get("allocate", "-"), c["calibration_images"], f"{c['prune_wall_s']:.0f}",
                         f"{c['peak_rss_mb']:.0f}"] for c in cost]), ""]
    return "\n".join(out)


def finetune_section(data) -> str:
    if not data:
        return ""
    rc = data["recipe"]
    out = ["### After a short identical finetune", "",
           f"`bench/finetune.py`: every pruned model (and the original, as a control) gets the same finetune "
           f"through the torch twin (`onnxprune.finetune.finetune`, weights written back into the ONNX): "
           f"{rc['epochs']} epoch over {rc['train_images']} Fashion-MNIST training images, batch {rc['batch_size']}, "
           f"{rc['optimizer']} lr {rc['lr']} ({rc['schedule']}), label smoothing {rc['label_smoothing']}, seed "
           f"{rc['seed']}. Test accuracy % before → after (`bench/results/finetune.json`{_when(data)}).", ""]
    res = data["results"]
    models = list(dict.fromkeys(r["model"] for r in res))
    levels = sorted({r["flops"] for r in res if r["flops"]}, reverse=True)
    cols = [(m, f) for m in models for f in levels]
    cell = {(r["row"], r["model"], r["flops"]): f"{100 * r['accuracy_before']:.2f} → {100 * r['accuracy_after']:.2f}"
            for r in res if "error" not in r}
    body = [["original (control)"] + [cell.get(("original", m, None), "") if f == levels[0] else "" for m, f in cols]]
    body += [[row] + [cell.get((row, m, f), "-") for m, f in cols]
             for row in dict.fromkeys(r["row"] for r in res if r["row"] != "original")]
    out += [_table(["row"] + [f"{m} {f:.0%}" for m, f in cols], body), ""]
    if (RESULTS / "finetune.png").exists():
        out += ["![finetune](bench/results/finetune.png)", ""]
    return "\n".join(out)


def imagenet_sample_section(data) -> str:
    """ImageNet MobileNetV2 on the real ImageNet sample (bench/imagenet_sample.py), both class folds."""
    if not data:
        return ""
    res = [r for r in data["results"] if "error" not in r]
    levels = sorted({r["flops"] for r in res}, reverse=True)
    folds = sorted({r["fold"] for r in res})
    present = {r["row"] for r in res}
    rows = [k for k in data["rows"] if k in present]   # the bench's order of rows, whichever run measured them
    cell = {(r["row"], r["fold"], r["flops"]): r for r in res}
    orig = {f: next(r["top1_original"] for r in res if r["fold"] == f) for f in folds}
    head = ["row"] + [f"{f} {lv:.0%}" for f in folds for lv in levels]

    def fmt(key, f, lv, what):
        r = cell.get((key, f, lv))
        if r is None:
            return "-"
        if what == "top1":
            return f"{100 * r['top1']:.1f} ({100 * (r['top1'] - r['top1_original']):+.1f})"
        if what == "calib":
            return f"{100 * r['calib_top1']:.1f}"
        return f"{r['prune_wall_s']:.0f} s / {r['time_v_max_rss_mb'] / 1024:.1f} GB"
    labels = {k: data["rows"][k]["label"] for k in rows}
    top1 = [[labels[k]] + [fmt(k, f, lv, "top1") for f in folds for lv in levels] for k in rows]
    calib = [[labels[k]] + [fmt(k, f, lv, "calib") for f in folds for lv in levels] for k in rows]
    cost = [[labels[k]] + [fmt(k, f, lv, "cost") for f in folds for lv in levels] for k in rows]
    loads = [r["loadavg_before"][0] for r in res if r.get("loadavg_before")]
    out = ["### ImageNet MobileNetV2 on real ImageNet photos, no labels, no training data", "",
           f"`bench/imagenet_sample.py` (`bench/results/imagenet_sample.json`{_when(data)}): torchvision's MobileNetV2 "
           "calibrated on 250 ImageNet photos of 250 classes (the image folder, `--preprocess imagenet "
           f"--augment {data['augment']}`: {250 * (1 + data['augment'])} samples, 25 photos held out by the "
           "library) and evaluated with labels on the centre crops of 250 photos of the *other* 250 classes: "
           "fold A calibrates on the classes ≡ 0 (mod 4) and evaluates on ≡ 2, fold B the reverse "
           f"(original top-1: {', '.join(f'{f} {100 * orig[f]:.1f}%' for f in folds)}). No labels are used by any "
           "row; Torch-Pruning's Taylor importance uses the original's top-1 as labels. "
           f"onnxprune rows with `round_to={data.get('round_to', 1)}`. A cell is one prune, measured once; a "
           "'-' was not run. Top-1 % on the evaluation photos (change from the original):", "", _table(head, top1), "",
           "Top-1 % on the centre crops of the calibration photos themselves (how much the fit over-fits them):",
           "", _table(head, calib), "",
           f"Prune wall time and peak RSS (each row a fresh process, 2 CPU cores shared with other jobs; load "
           f"average {min(loads):.1f}–{max(loads):.1f} at the rows' starts, so times are noisy):", "",
           _table(head, cost), ""]
    start = (data.get("machine") or {}).get("date", "")
    older = [labels[k] for k in rows if any(r.get("date", "") < start for r in res if r["row"] == k)]
    if older:   # rows a run with --merge kept (results before rows were dated have no date)
        out.insert(out.index("Top-1 % on the centre crops of the calibration photos themselves (how much the fit "
                             "over-fits them):") - 1,
                   f"\nMeasured by earlier runs of the bench (kept by `--merge`; same data and options): "
                   f"{'; '.join(older)}.")
    earlier = sorted({f"{r['fold']} {r['flops']:.0%}" for r in res if r.get("measured_as")})
    if earlier:
        out.insert(out.index("Top-1 % on the centre crops of the calibration photos themselves (how much the fit "
                             "over-fits them):") - 1,
                   f"\nThe default row's cells {', '.join(earlier)} were measured with `--allocate output` before "
                   "`auto` made it the default: the same code path, since auto resolves to output with "
                   "calibration data.")
    plot = pathlib.Path("bench/results/imagenet_sample.png")
    if (ROOT / plot).exists():
        out += [f"![imagenet sample]({plot.as_posix()})", ""]
    return "\n".join(out)


def imagenet_section(data) -> str:
    if not data:
        return ""
    out = ["### ImageNet MobileNetV2 on photo crops (the protocol before issue 13, not re-measured)", "",
           "The old protocol: crops of a few scikit-image photos, agreement only (no labels), measured before issue "
           "13 with `--round-to 1` and held-out crops (not images) choosing the ridge; kept for the record, not "
           "re-measured. The section above, on real ImageNet photos with labels, supersedes it. "
           f"`bench/imagenet.py` (`bench/results/imagenet.json`). No labels: agreement with the unpruned model. "
           f"Calibration crops come from {len(data['data']['calibration_photos'])} photos "
           f"({', '.join(data['data']['calibration_photos'])}); evaluation crops from other photos "
           f"({', '.join(data['data']['evaluation_photos'])}). \"calib photos\" columns: unseen crops of the "
           "calibration photos.", ""]
    q = data.get("quality")
    if q:
        tp = _load("torch_pruning_imagenet.json")  # Torch-Pruning 1.6.1 on the same crops
        q["results"] = sorted(q["results"] + [r for r in (tp or {}).get("results", []) if "error" not in r],
                              key=lambda r: -r["flops"])
        def name(r):
            if r["method"].startswith("torch-pruning"):
                return f"{r['method']} (uniform ratio)"
            return f"{r['method']}+{r['refit']} ({r.get('allocate') or 'uniform'})"
        rows = [[f"{r['flops']:.0%}", name(r),
                 f"{r['macs_ratio']:.3f}",
                 f"{100 * r['top1_agreement']:.1f}", f"{100 * r['top5_overlap']:.1f}", f"{r['kl']:.2f}",
                 f"{100 * r['in_top1_agreement']:.1f}" if "in_top1_agreement" in r else "-",
                 f"{r['prune_wall_s']:.0f}"] for r in q["results"] if "error" not in r]
        out += [f"{q['calibration_crops']} calibration crops, {q['eval_crops']} evaluation crops. \"prune s\" is wall "
                "time on 2 CPU cores shared with other jobs (the greedy-combined row at 70% ran beside two other "
                "benchmarks), so it is noisy. Torch-Pruning 1.6.1 rows: `bench/torch_pruning_imagenet.py` on the "
                "same crops (one uniform ratio bisected to the MACs, final Linear kept; Taylor importance from "
                "the cross-entropy against the original's top-1 on the calibration crops):", "",
                _table(["MACs target", "method+refit (allocation)", "MACs", "top-1 agree %", "top-5 overlap %", "KL",
                        "top-1 agree % (calib photos)", "prune s"], rows), ""]
        if data.get("plot"):
            out += [f"![imagenet]({data['plot']})", ""]
    f = data.get("folds")
    if f:
        res = [r for r in f["results"] if "error" not in r]
        rows = [[r["fold"], ", ".join(r["evaluation_photos"]), r["row"], f"{100 * r['top1_agreement']:.1f}",
                 f"{100 * r['top5_overlap']:.1f}", f"{r['kl']:.2f}", f"{100 * r['in_top1_agreement']:.1f}"]
                for r in res]
        for row in dict.fromkeys(r["row"] for r in res):
            mine = [r for r in res if r["row"] == row]
            rows.append(["mean", "", row] + [f"{np.mean([100 * r[k] for r in mine]):.1f}" if k != "kl" else
                                               f"{np.mean([r[k] for r in mine]):.2f}"
                                               for k in ("top1_agreement", "top5_overlap", "kl", "in_top1_agreement")])
        n_photos = len(data['data']['calibration_photos']) + len(data['data']['evaluation_photos'])
        out += [f"The photo split above is one choice. `--folds`: all {n_photos} "
                f"photos in 4 seeded random folds; each fold is evaluated once and the other photos calibrate "
                f"({f['calibration_crops']} crops, {f['flops']:.0%} MACs target, uniform allocation):", "",
                _table(["fold", "evaluation photos", "method+refit", "top-1 agree %", "top-5 overlap %", "KL",
                        "top-1 agree % (calib photos)"], rows), ""]
    c = data.get("cost")
    if c:
        rows = [[r["calibration_crops"], f"partial: {r['groups_done']} groups" if r.get("partial") else "full",
                 f"{r['prune_wall_s']:.0f}", f"{r.get('process_cpu_s', 0):.0f}", f"{r['peak_rss_mb']:.0f}"]
                for r in c["results"] if "error" not in r]
        out += ["Cost of greedy-local+full at 50% MACs (fresh process per run; a partial run stops after a "
                "time limit and compares peak RSS over the same groups):", "",
                _table(["calibration crops", "run", "wall s", "process CPU s", "peak RSS MB"], rows), ""]
    s = data.get("speed")
    if s:
        res = sorted(s["results"], key=lambda r: (r["batch"], -r.get("flops", 0.5), r["round_to"]))
        rows = [[r["batch"], f"{r.get('flops', 0.5):.0%}", r["round_to"], f"{r['macs_ratio']:.3f}",
                 f"{r['original']['median_ms']:.1f}", f"{r['pruned']['median_ms']:.1f}", f"{r['speedup_paired']:.2f}x"]
                for r in res]
        out += ["ONNX Runtime CPU latency (medians of interleaved rounds; speed-up is the median of the paired "
                "original/pruned ratios):", "",
                _table(["batch", "MACs target", "round-to", "MACs", "original ms", "pruned ms", "speed-up"], rows), ""]
    return "\n".join(out)


def gpu_section(data) -> str:
    if not data:
        return ""
    m = data["machine"]
    rows = [[r["precision"], r["batch"], f"{r['flops']:.0%}", r["round_to"], f"{r['original']['median_ms']:.3f}",
             f"{r['pruned']['median_ms']:.3f}", f"{r['speedup_paired']:.2f}x"] for r in data["latency"]]
    out = ["### GPU (ONNX Runtime CUDA execution provider)", "",
           f"`bench/gpu.py` on one {m.get('gpu')} (ONNX Runtime {m['onnxruntime']}, `bench/results/gpu.json`, "
           f"{m['date'][:10]}): the ImageNet MobileNetV2 and its magnitude-pruned copies, input and output bound on "
           "the GPU, medians of interleaved rounds, fp16 converted with `onnxruntime.transformers.float16` "
           "(inputs and outputs kept fp32). TensorRT: " + ("`trtexec` found." if data.get("trtexec") else
                                                          "no `trtexec` on that machine, not measured."), "",
           _table(["precision", "batch", "MACs target", "round-to", "original ms", "pruned ms", "speed-up"], rows), ""]
    part = data.get("cuda_path_partial")
    if part:
        out += ["Pruning with the activation taps on the GPU (greedy-local+full, 50% MACs, 512 crops; "
                f"{part['note']}):", "", "```"] + [ln.strip() for ln in part["log"] if "taps on" in ln] + ["```", ""]
    return "\n".join(out)


def latency_section(data) -> str:
    if not data:
        return ""
    rows = [[r["model"], f"{r['flops_target']:.0%}", r["round_to"], r["batch"], f"{r['macs_ratio']:.3f}",
             f"{r['original']['median_ms']:.2f}", f"{r['pruned']['median_ms']:.2f}", f"{r['speedup_paired']:.2f}x"]
            for r in data["results"] if "original" in r]
    return "\n".join(["### ONNX Runtime CPU latency", "",
                      f"Median of {data['settings'].get('repeats', '?')} interleaved runs "
                      f"(`bench/results/latency.json`, {data['machine'].get('cores')} shared cores: noisy). "
                      "Speed-up is original/pruned timed in the same round.", "",
                      _table(["model", "MACs target", "round-to", "batch", "MACs", "original ms", "pruned ms",
                              "speed-up"], rows), ""])


def latency_target_section(data) -> str:
    """bench/latency_target.py: the latency model's error, targets side by side, accuracy at equal latency."""
    if not data:
        return ""
    m = data["machine"]
    out = ["### Pruning to a measured latency", "",
           f"`bench/latency_target.py` (`bench/results/latency_target.json`{_when(data)}), ImageNet MobileNetV2, "
           f"ONNX Runtime {m.get('onnxruntime')} CPU, {m.get('cpu_model')}, {m.get('cores')} cores shared with other "
           "jobs (load averages below): wall-clock numbers are noisy.", ""]

    def load(sec):
        a, b = sec.get("loadavg_before"), sec.get("loadavg_after")
        return f"{a[0]:.1f} → {b[0]:.1f}" if a and b else "?"
    if data.get("model"):
        sec = data["model"]
        out += ["Latency model against measurement, 20 random allocations of the tables' fast widths, each timed "
                "interleaved with the original by the same clock (error of the prediction against the fastest "
                "round, the tables' statistic). *cpu*: CPU time of one intra-op thread, which other jobs do not "
                f"inflate; *wall*: elapsed time. Load average {load(sec)}.", "",
                _table(["batch", "clock", "threads", "table build s", "median error", "max error", "mean error",
                        "additive model median error"],
                       [[r["batch"], r["clock"], r["threads"], f"{r['build_s']:.0f}", f"{r['median_abs_err']:.1%}",
                         f"{r['max_abs_err']:.1%}", f"{r['mean_err']:+.1%}", f"{r['median_abs_err_additive']:.1%}"]
                        for r in sec["rows"]]), ""]
    if data.get("speed"):
        sec = data["speed"]
        out += ["All timed side by side in one run (medians of interleaved rounds; speed-up: median of the paired "
                "original/pruned ratios; magnitude selection, no calibration: widths do not depend on the method "
                f"with uniform allocation). Prune s includes the probe, checks and tables. Load average {load(sec)}.",
                "", _table(["model", "MACs", "batch", "median ms", "speed-up", "prune s"],
                           [[r["model"], f"{r['macs_ratio']:.3f}", r["batch"], f"{r['median_ms']:.2f}",
                             f"{r['speedup']:.2f}x", f"{r['prune_s']:.0f}"] for r in sec["rows"]]), ""]
    if data.get("accuracy"):
        sec = data["accuracy"]
        out += ["Top-1 on the ImageNet sample (one photo per even class): calibrate on one fold of classes "
                "(`--calib` folder, `--preprocess imagenet`), evaluate against the labels on the other; default "
                "method (greedy-local, full re-fit, round-to auto), the `--flops 0.5` row with uniform allocation "
                "(the default when it was measured, before `--allocate auto`). The `--latency` rows target the "
                "measured "
                f"latency of the `--flops 0.5` model of the same fold. Load average {load(sec)}.", ""]
        rows = []
        for f in sec["folds"]:
            sp = {(r["model"], r["batch"]): r["speedup"] for r in f["speed"]}
            rows.append([f"{f['calibration_classes']} → {f['evaluation_classes']}", "original", "1.000",
                         f"{100 * f['top1_original']:.1f}", "1.00x", "1.00x"])
            rows += [["", r["row"], f"{r['macs_ratio']:.3f}", f"{100 * r['top1']:.1f}", f"{sp[r['row'], 1]:.2f}x",
                      f"{sp[r['row'], 32]:.2f}x"] for r in f["rows"]]
        out += [_table(["calibration → evaluation classes", "model", "MACs", "top-1 %", "speed-up b1",
                        "speed-up b32"], rows), ""]
    return "\n".join(out)


def coverage_section(data) -> str:
    if not data:
        return ""
    by_name: dict[str, list] = {}
    for g in data["graphs"]:
        by_name.setdefault(g["name"], []).append(g)

    def span(gs, key, fmt):
        lo, hi = min(g[key] for g in gs), max(g[key] for g in gs)
        return fmt(lo) if fmt(lo) == fmt(hi) else f"{fmt(lo)}–{fmt(hi)}"
    pct = lambda v: f"{100 * v:.0f}%"  # noqa: E731
    def attn(gs):
        have = [g for g in gs if g.get("attn_mlp_prunable") is not None]
        return span(have, "attn_mlp_prunable", pct) if have else "-"
    rows = [[name, ", ".join(g["exporter"] for g in gs), span(gs, "channels_prunable", pct),
             span(gs, "macs_prunable", pct), attn(gs), span(gs, "macs_reached", lambda v: f"{v:.2f}"),
             f"{max(g['oracle_err'] for g in gs):.0e}"] for name, gs in by_name.items()]
    return "\n".join(["### Coverage of exported architectures", "",
                      "`bench/coverage.py`: share of channels and MACs in prunable groups (a group of attention "
                      "heads counts one channel per head), share of the attention (Q/K/V) and MLP hidden channels "
                      "in prunable groups for graphs with attention, MACs reached at a 50% target, largest "
                      "pruned-vs-masked-reference error.", "",
                      _table(["graph", "exporters", "channels prunable", "MACs prunable",
                              "attention+MLP channels prunable", "MACs reached", "oracle error"], rows), ""])


def imagenet_scaling_section(data) -> str:
    """bench/imagenet_scaling.py: fold A's calibration photos against those plus half its evaluation classes."""
    if not data:
        return ""
    rows = [[r["row"], r["photos"], r["samples"], f"{100 * r['top1']:.1f}", f"{100 * r['top1_original']:.1f}",
             f"{100 * r['agreement']:.1f}", f"{r['prune_wall_s']:.0f}"] for r in data["results"]]
    return "\n".join([
        "### ImageNet MobileNetV2: more calibration photos", "",
        f"`bench/imagenet_scaling.py` (`bench/results/imagenet_scaling.json`{_when(data)}): the default at "
        f"{data['flops']:.0%} MACs (`--augment {data['augment']}`, `--round-to 1`), calibrated on fold A's photos "
        "and on those plus half of fold A's evaluation classes (E1: the classes c with c // 4 even), both "
        f"evaluated on the other half (E2, {data['eval_photos']} photos of classes neither calibration saw).", "",
        _table(["calibration", "photos", "samples", "top-1 %", "original top-1 %", "agreement %", "prune wall s"],
               rows), ""])


def minilm_section(data) -> str:
    """bench/minilm.py: the pretrained sentence encoder at each MACs target, side by side."""
    if not data:
        return ""
    m = data["machine"]
    rows = []
    order = ["magnitude", "magnitude+full", "greedy-local+full", "greedy-combined+full", "heads-only", "mlp-only"]
    results = sorted(data["results"], key=lambda r: (r["flops_target"] or 0.0,
                                                     order.index(r["row"]) if r["row"] in order else len(order)))
    runs = {r.get("date") or m.get("date") for r in results}
    for r in results:
        target = f"{r['flops_target']:.0%}" if r["flops_target"] is not None else "MLP widths × 0.5"
        if "error" in r:
            rows.append([target, r["row"], "-", "-", "-", "-", "-", r["error"][:90]])
            continue
        load = r.get("loadavg_before") or [None]
        note = [f"load {load[0]:.1f}"] if load[0] is not None else []
        if r.get("date") and r["date"] != m.get("date"):  # a row kept from an earlier run
            note.append(f"run of {r['date'][:16].replace('T', ' ')}")
        if r.get("calib_sentences") and r["calib_sentences"] != data["calib_sentences"]:
            note.append(f"calibrated on {r['calib_sentences']} sentences")
        if r.get("distill"):
            d = r["distill"]
            note.append(f"distillation {d['seconds']:.0f} s, {d['epochs']} epochs, best {d['best_epoch']}")
        rows.append([target, r["row"], f"{r['macs_ratio']:.3f}", f"{r['mean_cosine']:.4f}",
                     f"{100 * r['nn_agreement']:.1f}", f"{r['prune_wall_s']:.0f}", f"{r['prune_cpu_s']:.0f}",
                     "; ".join(note)])
    lat = [[f"{r['flops_target']:.0%}", r.get("row", "greedy-local+full"), f"{r['macs_ratio']:.3f}",
            f"{r['original']['median_ms']:.0f}", f"{r['pruned']['median_ms']:.0f}", f"{r['speedup_paired']:.2f}x",
            f"run of {r['date'][:16].replace('T', ' ')}" if r.get("date") and r["date"] != m.get("date") else ""]
           for r in sorted(data.get("latency", []), key=lambda r: (r["flops_target"], r.get("row", "")))]
    if len(runs) > 1:
        took = f"rows from {len(runs)} runs (a row's note names its run when it is not the latest),"
    else:
        took = (f"{data['total_s'] / 60:.0f} min" if "total_s" in data else
                "stopped before its last rows: the rows below are all that ran")
    out = ["### Transformers: all-MiniLM-L6-v2", "",
           f"`bench/minilm.py` (`bench/results/minilm.json`{_when(data)}, {took} on "
           f"{m.get('cores')} shared CPU cores): the pretrained sentence encoder ({data['model']}, "
           f"{data['tokens']} tokens, no finetuning) calibrated on {data['calib_sentences']} sentences "
           f"(on average {data['calib_real_tokens_mean']:.0f} real tokens; padding left out of the statistics) "
           f"and evaluated on {data['eval_sentences']} other sentences: mean cosine similarity of the "
           "embeddings and nearest-neighbour agreement. Prune time is wall and process CPU seconds with the "
           "load average of the shared machine when the row started; greedy-combined measures its output "
           f"loss on {data['global_samples']} sentences. The attention-dims rows are what the default "
           "(`--attention auto`) does on this model: the dims within every head are the groups (re-based on the "
           "calibration data, docs/DESIGN.md \"Dims within heads\"); the other rows prune whole heads "
           "(`--attention heads`, the default before).", "",
           _table(["MACs target", "row", "MACs", "mean cosine", "NN agreement %", "prune wall s", "prune CPU s",
                   "note"], rows), ""]
    if lat:
        out += ["ONNX Runtime CPU latency of the pruned models, batch 32 × 128 tokens (medians of interleaved "
                "rounds; speed-up is the median of the paired ratios):", "",
                _table(["MACs target", "row", "MACs", "original ms", "pruned ms", "speed-up", "note"], lat), ""]
    return "\n".join(out)


def minilm_fused_section(data) -> str:
    """bench/minilm_fused.py: MiniLM fused by ONNX Runtime's transformer optimizer, then pruned."""
    if not data:
        return ""
    m = data["machine"]
    rows = [[f"{r['flops_target']:.0%}", f"{r['macs_ratio']:.3f}", f"{r['mean_cosine']:.4f}",
             f"{100 * r['nn_agreement']:.1f}", f"{r['prune_wall_s']:.0f}",
             f"{r['latency']['original']['median_ms']:.0f}", f"{r['latency']['pruned']['median_ms']:.0f}",
             f"{r['latency']['speedup_paired']:.2f}x"] for r in data["results"]]
    return "\n".join([
        "### Transformers: all-MiniLM-L6-v2 fused by ONNX Runtime", "",
        f"`bench/minilm_fused.py` (`bench/results/minilm_fused.json`{_when(data)}, {data['total_s'] / 60:.0f} min on "
        f"{m.get('cores')} shared CPU cores): the same export fused by `onnxruntime.transformers.optimizer` "
        f"({', '.join(data['fused_ops'])}), pruned by the default pipeline on {data['calib_sentences']} sentences "
        f"and evaluated on {data['eval_sentences']} other sentences as above. Only the MLP widths prune (the heads "
        "inside the fused Attention nodes freeze). Latency: ONNX Runtime CPU, batch 32 × 128 tokens, the fused "
        "original against the pruned model, interleaved.", "",
        _table(["MACs target", "MACs", "mean cosine", "NN agreement %", "prune wall s", "original ms", "pruned ms",
                "speed-up"], rows), ""])


def exporter_zoo_section(data) -> str:
    """The tf2onnx / paddle2onnx graphs of `models/exporter_zoo.py` (`bench/coverage.py --exporter-zoo`)."""
    if not data:
        return ""

    def frozen(g) -> str:
        why = sorted({r.split(": ", 1)[-1] for f in g.get("frozen", []) for r in f["reasons"]
                      if "reaches graph output" not in r})
        return "; ".join(why) or "-"

    def reached(g) -> str:
        if g.get("macs_reached") is None:
            return "n/a: " + (g.get("macs_note") or "-")
        note = f" ({g['macs_note']})" if g.get("macs_note") else ""
        return f"{g['macs_reached']:.3f}{note}"
    rows = [[g["name"], g["exporter"], g["opset"], f"{100 * g['channels_prunable']:.1f}%", reached(g),
             f"{g['oracle_err']:.0e}" if g.get("oracle_err") is not None else "-",
             f"{g['ort_vs_framework']:.0e}", frozen(g)] for g in data["graphs"] if "error" not in g]
    errors = [f"- {g['name']}: {g['error']}" for g in data["graphs"] if "error" in g]
    versions = "; ".join(f"{fw}: " + ", ".join(f"{k} {v}" for k, v in b["versions"].items())
                         for fw, b in data.get("build_times", {}).items())
    return "\n".join(["### Coverage of the exporter zoo (tf2onnx, paddle2onnx)", "",
                      f"`python -m bench.coverage --exporter-zoo DIR` on the graphs `models/exporter_zoo.py` "
                      f"builds ({versions}): share of channels in prunable groups, MACs fraction reached by "
                      "`--flops 0.5` (magnitude), largest pruned-vs-masked-reference error, ONNX Runtime against "
                      "the framework's own output (relative), and what freezes besides the classifier or "
                      f"detection head that reaches the graph output; {data['seconds'] / 60:.0f} min.", "",
                      _table(["graph", "exporter", "opset", "channels prunable", "MACs reached at 0.5",
                              "oracle error", "ORT vs framework", "frozen by"], rows), *errors, ""])


def main() -> None:
    parts = ["## Results", ""]
    tp = _load("torch_pruning.json")
    for name, title in (("quality.json", "Quality: local imitation and baselines"),
                        ("quality_global.json", "Quality: global imitation")):
        data = _load(name)
        if data:
            data["_file"] = name
            omp = _load("quality_omp.json") if name == "quality.json" else None
            if omp:  # greedy-omp rows, measured in their own run on the same models and data
                data["results"] += omp["results"]
                data["omp_total_s"] = omp["total_s"]
            if name == "quality.json" and tp:  # Torch-Pruning 1.6.1 beside our baselines
                data["results"] += [dict(r, label=f"{r['row']} (uniform ratio)") for r in tp["results"]
                                    if "error" not in r]
            parts.append(quality_section(data, title))
    parts.append(finetune_section(_load("finetune.json")))
    parts.append(imagenet_sample_section(_load("imagenet_sample.json")))
    parts.append(imagenet_scaling_section(_load("imagenet_scaling.json")))
    parts.append(imagenet_section(_load("imagenet.json")))
    parts += [gpu_section(_load("gpu.json")), latency_section(_load("latency.json")),
              latency_target_section(_load("latency_target.json")), minilm_section(_load("minilm.json")),
              minilm_fused_section(_load("minilm_fused.json")),
              coverage_section(_load("coverage.json")),
              exporter_zoo_section(_load("exporter_zoo.json"))]
    section = "\n".join(p for p in parts if p).rstrip() + "\n"
    readme = (ROOT / "README.md").read_text()
    if BEGIN in readme:
        head, rest = readme.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
    else:
        head, tail = readme.rstrip() + "\n\n", "\n"
    (ROOT / "README.md").write_text(f"{head}{BEGIN}\n{section}{END}{tail}")
    print(f"README.md: wrote the results section ({section.count(chr(10))} lines)")


if __name__ == "__main__":
    main()
