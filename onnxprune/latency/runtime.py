"""Where latencies are measured: an ONNX Runtime execution provider, a thread count, a precision
(`Runtime`), the model inputs for a batch size (`feeds`), and timers (docs/DESIGN.md, "Latency").

A timer turns a model and its inputs into a callable that runs the model once and returns the wall time in
milliseconds. `OrtTimer` runs ONNX Runtime; `FakeTimer` returns a cost computed from the graph's shapes
(per-width costs known in advance), for tests: the test suite sets `ONNXPRUNE_TIMER=fake`, so no test
depends on the speed of the machine it runs on. `time_interleaved` runs several of them round-robin, so
that drift and load spikes hit every model alike.
"""
from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import onnx

from ..errors import UserError
from ..graph.inputs import model_inputs
from ..graph.session import inference_session
from ..options import OptionError, Provider

EXECUTION_PROVIDERS = {Provider.CPU: "CPUExecutionProvider", Provider.CUDA: "CUDAExecutionProvider",
                       Provider.TENSORRT: "TensorrtExecutionProvider"}
TIMER_ENV = "ONNXPRUNE_TIMER"  # "fake": every timer is a FakeTimer (the test suite sets it)

Runner = Callable[[], float]   # runs the model once, returns milliseconds


def cores() -> int:
    """CPU cores this process may run on (affinity-aware)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def loadavg() -> list[float] | None:
    try:
        with open("/proc/loadavg") as f:
            return [float(x) for x in f.read().split()[:3]]
    except OSError:
        return None


@dataclass(frozen=True)
class Runtime:
    """An ONNX Runtime configuration to measure latency on."""
    provider: Provider = Provider.CPU
    threads: int | None = None   # intra-op threads; None: every core this process may use
    fp16: bool = False
    # "wall": elapsed time (latency). "cpu": CPU time of the calling thread, on one intra-op thread only: the
    # work of a run, without the waiting that other processes on a busy machine add (a diagnostic for
    # shared machines; not a latency)
    clock: str = "wall"

    def __post_init__(self):
        object.__setattr__(self, "provider", Provider.parse("provider", self.provider))
        if self.clock not in ("wall", "cpu"):
            raise OptionError("clock", self.clock, "choose from wall, cpu")
        if self.clock == "cpu" and (self.provider != Provider.CPU or self.threads != 1):
            raise OptionError("clock", self.clock, "the cpu clock measures one intra-op thread on the cpu provider")

    @property
    def intra_op_threads(self) -> int:
        return self.threads or cores()

    def check(self, fp16_option: str = "fp16") -> None:
        """A clear error when the provider is not in this ONNX Runtime, or fp16 is asked of the CPU."""
        import onnxruntime as ort
        if hasattr(ort, "preload_dlls") and self.provider != Provider.CPU:
            try:  # CUDA and cuDNN from the nvidia-* wheels, when present
                ort.preload_dlls()
            except Exception:  # noqa: BLE001 (absent libraries show up as a missing provider below)
                pass
        name = EXECUTION_PROVIDERS[self.provider]
        available = ort.get_available_providers()
        if name not in available:
            raise OptionError("provider", self.provider, f"{name} is not available in this ONNX Runtime "
                              f"({ort.__version__}; available: {', '.join(available)}); the GPU providers come with "
                              "the onnxruntime-gpu package and an NVIDIA GPU")
        if self.fp16 and self.provider == Provider.CPU:
            raise OptionError(fp16_option, True, "fp16 is measured on the cuda and tensorrt providers only "
                              "(ONNX Runtime's CPU kernels are fp32)")

    def describe(self) -> dict:
        import onnxruntime as ort
        d = {"provider": str(self.provider), "threads": self.intra_op_threads, "fp16": self.fp16,
             "onnxruntime": ort.__version__, "cpu": cpu_model(), "cores": cores()}
        if self.clock != "wall":
            d["clock"] = self.clock
        return d

    def providers(self) -> list:
        if self.provider == Provider.CPU:
            return ["CPUExecutionProvider"]
        cuda = ("CUDAExecutionProvider", {"device_id": 0, "cudnn_conv_algo_search": "HEURISTIC"})
        if self.provider == Provider.CUDA:
            return [cuda, "CPUExecutionProvider"]
        trt = ("TensorrtExecutionProvider", {"device_id": 0, "trt_fp16_enable": self.fp16})
        return [trt, cuda, "CPUExecutionProvider"]

    def prepare(self, model: onnx.ModelProto) -> onnx.ModelProto:
        """The model as it is timed: on CUDA in fp16, converted (inputs and outputs stay fp32)."""
        if self.fp16 and self.provider == Provider.CUDA:
            from onnxruntime.transformers.float16 import convert_float_to_float16
            return convert_float_to_float16(model, keep_io_types=True)
        return model

    def session(self, model: onnx.ModelProto):
        import onnxruntime as ort
        so = ort.SessionOptions()
        so.intra_op_num_threads = self.intra_op_threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        # no spinning: models are timed interleaved, and a session's intra-op threads spinning after its run
        # take the cores from the next one (docs/DESIGN.md, "Latency": the same pair measured 0.91x-2.04x over
        # six repeats with spinning, 1.28x-1.36x without)
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        sess = inference_session(self.prepare(model), so, self.providers())
        want = EXECUTION_PROVIDERS[self.provider]
        if sess.get_providers()[0] != want:
            raise UserError(f"ONNX Runtime did not create a {want} session (it uses {sess.get_providers()})")
        return sess


def feeds(model: onnx.ModelProto, batch: int, example: Mapping[str, np.ndarray] | None = None,
          seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs for one run at `batch`: the first rows of `example` (repeated when it has fewer), or, without
    an example, random values of the model's declared shapes with the first dimension as the batch. A
    symbolic dimension other than the batch cannot be guessed: the error names the input."""
    declared = model_inputs(model)
    rng = np.random.default_rng(seed)
    out = {}
    for name, (dtype, shape) in declared.items():
        if example is not None:
            if name not in example:
                raise UserError(f"input '{name}': not in the data (it has {sorted(example)})")
            arr = np.asarray(example[name])
            if arr.ndim == 0 or len(arr) == 0:
                raise UserError(f"input '{name}': the data holds no rows")
            out[name] = np.ascontiguousarray(np.take(arr, np.arange(batch) % len(arr), axis=0))
            continue
        if dtype is None:
            raise UserError(f"input '{name}': its element type is not one onnxprune can make random data for")
        if not shape:
            raise UserError(f"input '{name}' is a scalar; give data to time this model with")
        dims = []
        for i, d in enumerate(shape):
            if i == 0:
                if d is not None and d != batch:
                    raise UserError(f"input '{name}' has a fixed batch dimension {d}; it cannot be timed at "
                                    f"batch {batch}")
                dims.append(batch)
            elif d is None:
                raise UserError(f"input '{name}': dimension {i} is symbolic; give data (or input shapes) to take "
                                "its shape from")
            else:
                dims.append(d)
        if np.issubdtype(dtype, np.floating):
            out[name] = rng.standard_normal(dims).astype(dtype)
        else:
            out[name] = np.zeros(dims, dtype=dtype)
    return out


# ------------------------------------------------------------------------------------------- timers
class Timer:
    """Makes runners: callables that run a model once and return milliseconds."""
    kind = "abstract"

    def __init__(self, runtime: Runtime):
        self.runtime = runtime

    def describe(self) -> dict:
        return {"timer": self.kind, **self.runtime.describe()}

    def runner(self, model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> Runner:
        raise NotImplementedError


class OrtTimer(Timer):
    """Wall time of `session.run` on the runtime's provider (inputs and outputs bound on the GPU there)."""
    kind = "onnxruntime"

    def runner(self, model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> Runner:
        sess = self.runtime.session(model)
        names = {i.name for i in sess.get_inputs()}
        feed = {k: v for k, v in feed.items() if k in names}
        if self.runtime.provider == Provider.CPU:
            clock = time.thread_time if self.runtime.clock == "cpu" else time.perf_counter

            def run() -> float:
                t0 = clock()
                sess.run(None, feed)
                return (clock() - t0) * 1e3
            return run
        import onnxruntime as ort
        io = sess.io_binding()
        for k, v in feed.items():
            io.bind_ortvalue_input(k, ort.OrtValue.ortvalue_from_numpy(v, "cuda", 0))
        for o in sess.get_outputs():
            io.bind_output(o.name, "cuda")

        def run_bound() -> float:
            t0 = time.perf_counter()
            sess.run_with_iobinding(io)
            return (time.perf_counter() - t0) * 1e3
        return run_bound


class FakeTimer(Timer):
    """A deterministic stand-in for a runtime, with per-width costs known in advance: a run costs
    `overhead_ms` plus, for every Conv, Gemm and MatMul with a constant weight, its multiply-adds times a
    penalty of `slow` for each channel dimension that is not a multiple of 8 (a depthwise Conv: its one
    channel dimension). Every other op is free. `power` != 1 bends the total (cost ** power), a runtime
    whose costs do not add up, to exercise the measured correction of a latency target."""
    kind = "fake"

    def __init__(self, runtime: Runtime | None = None, overhead_ms: float = 0.01, scale: float = 1e-6,
                 power: float = 1.0, slow: float = 2.0):
        super().__init__(runtime or Runtime())
        self.overhead_ms, self.scale, self.power, self.slow = overhead_ms, scale, power, slow

    def describe(self) -> dict:
        return {"timer": self.kind, "provider": str(self.runtime.provider), "threads": self.runtime.threads,
                "fp16": self.runtime.fp16, "overhead_ms": self.overhead_ms, "scale": self.scale,
                "power": self.power, "slow": self.slow}

    def pen(self, c: int) -> float:
        return 1.0 if c % 8 == 0 else self.slow

    def cost(self, model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> float:
        import onnxruntime as ort
        weighted = [n for n in model.graph.node
                    if n.op_type in ("Conv", "Gemm", "MatMul") and len(n.input) > 1
                    and n.input[1] in {t.name for t in model.graph.initializer}]
        wanted = list(dict.fromkeys(n.output[0] if n.op_type == "Conv" else n.input[0] for n in weighted))
        m = onnx.ModelProto()
        m.CopyFrom(model)
        have = {o.name for o in m.graph.output} | set(feed)
        m.graph.output.extend(onnx.helper.make_empty_tensor_value_info(t) for t in wanted if t not in have)
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.log_severity_level = 1, 3
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        sess = inference_session(m, so, ["CPUExecutionProvider"])
        names = [o.name for o in sess.get_outputs()]
        got = sess.run(None, {k: v for k, v in feed.items() if k in {i.name for i in sess.get_inputs()}})
        shapes = {n: list(v.shape) for n, v in zip(names, got)}
        for k, v in feed.items():
            shapes[k] = list(v.shape)
        inits = {t.name: list(t.dims) for t in m.graph.initializer}
        total = 0.0
        for node in m.graph.node:
            if node.op_type == "Conv" and len(node.input) > 1 and node.input[1] in inits:
                w, out = inits[node.input[1]], shapes.get(node.output[0])
                if out is None or None in out:
                    raise ValueError(f"fake timer: no shape for {node.output[0]}")
                group = next((a.i for a in node.attribute if a.name == "group"), 1)
                c_out, c_in = w[0], w[1] * group
                macs = float(np.prod(out)) * float(np.prod(w[1:]))
                total += macs * (self.pen(c_out) if group == c_in == c_out and group > 1
                                 else self.pen(c_in) * self.pen(c_out))
            elif node.op_type in ("Gemm", "MatMul") and len(node.input) > 1 and node.input[1] in inits:
                a, w = shapes.get(node.input[0]), inits[node.input[1]]
                if a is None or None in a:
                    raise ValueError(f"fake timer: no shape for {node.input[0]}")
                trans_a = next((x.i for x in node.attribute if x.name == "transA"), 0)
                trans_b = next((x.i for x in node.attribute if x.name == "transB"), 0)
                k = a[0] if (node.op_type == "Gemm" and trans_a) else a[-1]
                rows = float(np.prod(a)) / k
                n = w[0] if (node.op_type == "Gemm" and trans_b) else w[-1]
                total += rows * k * n * self.pen(k) * self.pen(n)
        return self.overhead_ms + (total * self.scale) ** self.power

    def runner(self, model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> Runner:
        ms = self.cost(model, feed)
        return lambda: ms


def default_timer(runtime: Runtime) -> Timer:
    """The timer for a runtime: ONNX Runtime's wall time; with $ONNXPRUNE_TIMER 'cpu', the CPU time of one
    intra-op thread instead (the work of a run, for machines shared with other jobs, CPU provider only); a
    fake one when it is 'fake' or, with its parameters, e.g. 'fake:slow=1,power=1.1' (for tests)."""
    spec = os.environ.get(TIMER_ENV, "").strip().lower()
    if spec == "cpu":
        if runtime.provider != Provider.CPU:
            raise UserError(f"${TIMER_ENV}=cpu measures the cpu provider only, not {runtime.provider}")
        return OrtTimer(Runtime(Provider.CPU, 1, runtime.fp16, clock="cpu"))
    if spec == "fake" or spec.startswith("fake:"):
        params = {}
        for item in spec[5:].split(","):
            if item.strip():
                name, _, value = item.partition("=")
                if name.strip() not in ("overhead_ms", "scale", "power", "slow"):
                    raise UserError(f"${TIMER_ENV}: unknown fake timer parameter '{name.strip()}'")
                params[name.strip()] = float(value)
        return FakeTimer(runtime, **params)
    return OrtTimer(runtime)


def time_interleaved(runs: Mapping, repeats: int, warmup: int = 3) -> dict:
    """Milliseconds of each runner in `runs`, round-robin: every round calls each runner once, and the
    starting position rotates each round so no runner is always first or last. {name: array of times}."""
    names = list(runs)
    for _ in range(warmup):
        for n in names:
            runs[n]()
    times: dict = {n: [] for n in names}
    for r in range(repeats):
        for k in range(len(names)):
            n = names[(r + k) % len(names)]
            times[n].append(runs[n]())
    return {n: np.asarray(t, dtype=np.float64) for n, t in times.items()}


def time_budgeted(runs: Mapping, min_rounds: int = 5, max_rounds: int = 40, budget_ms: float = 300.0,
                  warmup: int = 2) -> dict:
    """`time_interleaved`, with as many rounds (between `min_rounds` and `max_rounds`) as fit in about
    `budget_ms` of measured time per runner, judged from the warm-up."""
    names = list(runs)
    probe = time_interleaved(runs, 1, warmup)
    per_round = max(float(np.median([probe[n][0] for n in names])) * len(names), 1e-6)
    rounds = int(np.clip(budget_ms * len(names) / per_round, min_rounds, max_rounds))
    more = time_interleaved(runs, rounds - 1, 0)
    return {n: np.concatenate([probe[n], more[n]]) for n in names}


def summarize(ms: np.ndarray) -> dict:
    p10, p50, p90 = np.percentile(ms, [10, 50, 90])
    return {"median_ms": float(p50), "p10_ms": float(p10), "p90_ms": float(p90), "mean_ms": float(np.mean(ms)),
            "n": int(np.size(ms))}

