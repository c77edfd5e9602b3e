"""GPU evidence: the CUDA path of pruning, and ONNX Runtime CUDA latency of original vs pruned models.

    python bench/gpu.py [--model models/cache/mobilenetv2_imagenet.onnx] [--calib 512]
                        [--repeats 100] [--out bench/results/gpu.json] [--allow-cpu]

Needs onnxruntime-gpu and an NVIDIA GPU (`pip install -e '.[gpu]'`); --allow-cpu runs the same
steps without one (a dry run of the script, nothing worth recording).

1. CUDA path of pruning: the model (ImageNet MobileNetV2, models/imagenet_weights.py) is pruned
   with greedy-local+full to 50% MACs on --calib photo crops twice, activation taps on the CUDA
   execution provider and on the CPU one (same process, same crops): wall time of each, whether the
   kept channels are the same, and top-1 agreement of the two pruned models with the original on
   evaluation crops.  greedy-taylor (global imitation: the torch twin runs on the GPU) on the
   Fashion-MNIST MobileNet at 50% MACs: wall time and test accuracy.
2. Latency on the CUDA execution provider: the model and magnitude-pruned copies at 70/50/30% MACs
   with round-to 1 and 8, batch 1 and 32, fp32 and fp16 (onnxruntime.transformers.float16, inputs
   and outputs kept fp32).  Input and output stay on the GPU (IOBinding), so the times are the
   network's, not the host copies'.  Interleaved rounds, medians; speed-up = original / pruned.
3. TensorRT: trtexec is looked up on PATH; when missing the JSON says so.
"""
from __future__ import annotations

import argparse
import os
import shutil
import time

import numpy as np

from bench.lib.common import format_table, machine_info, summarize, time_interleaved, write_json

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LEVELS = (0.7, 0.5, 0.3)


def cuda_providers(allow_cpu: bool) -> list:
    import onnxruntime as ort
    if hasattr(ort, "preload_dlls"):  # CUDA and cuDNN from the nvidia-* wheels, when present
        ort.preload_dlls()
    if "CUDAExecutionProvider" in ort.get_available_providers():
        return [("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"]
    if allow_cpu:
        return ["CPUExecutionProvider"]
    raise SystemExit("bench/gpu.py: ONNX Runtime has no CUDAExecutionProvider "
                     f"({ort.get_available_providers()}); install onnxruntime-gpu or pass --allow-cpu")


def session(model, providers):
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=providers)
    want = providers[0][0] if isinstance(providers[0], tuple) else providers[0]
    if sess.get_providers()[0] != want:
        raise RuntimeError(f"session runs on {sess.get_providers()}, not {want}")
    return sess


def bound_run(sess, x: np.ndarray, on_gpu: bool):
    """A callable running `sess` on `x` with input and output bound on the device."""
    import onnxruntime as ort
    dev = "cuda" if on_gpu else "cpu"
    io = sess.io_binding()
    io.bind_ortvalue_input(sess.get_inputs()[0].name, ort.OrtValue.ortvalue_from_numpy(x, dev, 0))
    for o in sess.get_outputs():
        io.bind_output(o.name, dev)
    return lambda: sess.run_with_iobinding(io)


# ------------------------------------------------------------------------------------ 1. CUDA path

def cuda_path(model_path: str, n_calib: int, n_eval: int, providers) -> dict:
    from bench.lib.imagenet import logits, metrics
    from models.photo_crops import crops
    from onnxprune import prune
    from onnxprune.calibration import taps
    calib = {"input": crops("calibration", n_calib, 0)}
    x_eval = crops("evaluation", n_eval, 1)
    ref = logits(model_path, x_eval)
    out = {}
    for name, provs in (("cuda", None), ("cpu", ["CPUExecutionProvider"])):
        taps._PROVIDERS = provs  # the taps' execution providers for this run (None: onnxprune's own choice)
        provs = taps.providers()
        t0 = time.perf_counter()
        pruned, rep = prune(model_path, calib, method="greedy-local", refit="full", flops=0.5, round_to=1,
                            allocate="uniform")
        wall = time.perf_counter() - t0
        out[name] = {"providers": [str(p) for p in provs], "prune_wall_s": wall, "macs_ratio": rep.macs_ratio,
                     "kept": {g.id: [int(i) for i in rep.selection.kept[g.id]] for g in rep.groups if not g.frozen},
                     **metrics(ref, logits(pruned, x_eval))}
        print(f"  greedy-local+full 0.5, taps on {provs[0]}: {wall:.1f}s, top1 agreement "
              f"{out[name]['top1_agreement']:.3f}", flush=True)
    taps._PROVIDERS = None
    same = out["cuda"]["kept"] == out["cpu"]["kept"]
    differ = sum(len(set(a) ^ set(out["cpu"]["kept"][g])) for g, a in out["cuda"]["kept"].items())
    return {"model": os.path.relpath(model_path, ROOT), "calibration_crops": n_calib, "eval_crops": n_eval,
            "runs": out, "same_kept_channels": same, "kept_channels_differing": differ}


def global_on_gpu() -> dict:
    import torch

    from onnxprune import prune
    from onnxprune.report.evaluate import compare
    t0 = time.perf_counter()
    pruned, rep = prune("models/fmnist_mobilenet.onnx", "models/fmnist_calib.npz", method="greedy-taylor",
                        refit="full", flops=0.5)
    wall = time.perf_counter() - t0
    res = compare("models/fmnist_mobilenet.onnx", pruned, "models/fmnist_test.npz")
    rec = {"model": "fmnist_mobilenet", "method": "greedy-taylor+full", "flops": 0.5,
           "twin_device": "cuda" if torch.cuda.is_available() else "cpu", "prune_wall_s": wall,
           "macs_ratio": rep.macs_ratio, **res}
    print(f"  greedy-taylor+full 0.5 on fmnist_mobilenet (twin on {rec['twin_device']}): {wall:.1f}s, "
          f"accuracy {res['accuracy_pruned']:.4f}", flush=True)
    return rec


# ------------------------------------------------------------------------------------ 2. latency

def latency(model_path: str, providers, repeats: int, on_gpu: bool) -> list[dict]:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    from onnxprune import load_model, prune
    orig = load_model(model_path)
    models = {("orig", 1): orig}
    for f in LEVELS:
        for rt in (1, 8):
            models[(f, rt)], _ = prune(orig, method="magnitude", flops=f, round_to=rt)
    rows = []
    for precision in ("fp32", "fp16"):
        sessions = {}
        for key, m in models.items():
            if precision == "fp16":
                m = convert_float_to_float16(m, keep_io_types=True)
            sessions[key] = session(m, providers)
        for batch in (1, 32):
            x = np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype(np.float32)
            runs = {k: bound_run(s, x, on_gpu) for k, s in sessions.items()}
            times = time_interleaved(runs, repeats, warmup=10)
            o = summarize(times[("orig", 1)])
            for key in models:
                if key[0] == "orig":
                    continue
                p = summarize(times[key])
                rows.append({"precision": precision, "batch": batch, "flops": key[0], "round_to": key[1],
                             "original": o, "pruned": p, "speedup": o["median_ms"] / p["median_ms"],
                             "speedup_paired": float(np.median(times[("orig", 1)] / times[key]))})
                print(f"  {precision} batch {batch} MACs {key[0]} round-to {key[1]}: {o['median_ms']:.3f} -> "
                      f"{p['median_ms']:.3f} ms ({rows[-1]['speedup_paired']:.2f}x)", flush=True)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=os.path.join("models", "cache", "mobilenetv2_imagenet.onnx"))
    ap.add_argument("--calib", type=int, default=512)
    ap.add_argument("--eval", type=int, default=500)
    ap.add_argument("--repeats", type=int, default=100)
    ap.add_argument("--out", default=os.path.join("bench", "results", "gpu.json"))
    ap.add_argument("--allow-cpu", action="store_true", help="run without a GPU (a dry run)")
    ap.add_argument("--skip-path", action="store_true", help="latency only")
    args = ap.parse_args()
    os.chdir(ROOT)
    providers = cuda_providers(args.allow_cpu)
    on_gpu = isinstance(providers[0], tuple)
    import onnxruntime as ort
    import torch
    info = machine_info("ONNX Runtime CUDA execution provider" if on_gpu else "dry run on the CPU")
    info.update(onnxruntime=ort.__version__, torch=torch.__version__,
                gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
    t0 = time.perf_counter()
    doc = {"machine": info, "trtexec": shutil.which("trtexec")}
    if not args.skip_path:
        print("1. CUDA path of pruning", flush=True)
        doc["cuda_path"] = cuda_path(args.model, args.calib, args.eval, providers)
        doc["global_on_gpu"] = global_on_gpu()
    print("2. latency", flush=True)
    doc["latency"] = latency(args.model, providers, args.repeats, on_gpu)
    print("\n" + format_table(
        ["precision", "batch", "MACs", "round-to", "original ms", "pruned ms", "speed-up"],
        [[r["precision"], r["batch"], r["flops"], r["round_to"], f"{r['original']['median_ms']:.3f}",
          f"{r['pruned']['median_ms']:.3f}", f"{r['speedup_paired']:.2f}x"] for r in doc["latency"]]))
    doc["total_s"] = time.perf_counter() - t0
    write_json(args.out, doc, doc["total_s"])


if __name__ == "__main__":
    main()
