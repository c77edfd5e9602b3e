"""Activation taps: an ONNX Runtime session of a model whose outputs are the tensors a group needs.

The graph is cut after the tapped tensors, so early groups cost a fraction of a full forward pass.
CUDAExecutionProvider is used when onnxruntime-gpu sees a GPU, CPU otherwise (logged once).
"""
from __future__ import annotations

import logging

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort

from ..errors import UserError
from ..graph.export import finish
from ..graph.inputs import fixed_batch
from ..graph.normalise import import_graph
from ..graph.session import inference_session, runtime_message

log = logging.getLogger("onnxprune")
_PROVIDERS: list | None = None  # names, or (name, options) pairs


def providers() -> list:
    global _PROVIDERS
    if _PROVIDERS is None:
        avail = ort.get_available_providers()
        # HEURISTIC: each tap session runs a handful of batches, too few to repay the CUDA EP's default
        # exhaustive cuDNN algorithm search, paid per session and input shape (with it, ImageNet MobileNetV2
        # taps took 257 s on an H100 against 121 s on its 16-core CPU EP; HEURISTIC is not yet measured there)
        _PROVIDERS = ([("CUDAExecutionProvider", {"cudnn_conv_algo_search": "HEURISTIC"}), "CPUExecutionProvider"]
                      if "CUDAExecutionProvider" in avail else ["CPUExecutionProvider"])
        log.info("activation taps run on ONNX Runtime %s", "CUDA" if len(_PROVIDERS) == 2 else "CPU")
    return _PROVIDERS


class Tap:
    """Run `model` and return the named tensors (graph cut after them).

    A model with a fixed batch dimension B runs B samples per session call. When every tapped tensor is
    batch first (its inferred first dimension is B), a larger batch is run B samples at a time and the outputs
    joined along the batch axis (`joins`): the statistics then take the calibration's batches whole, as for a
    dynamic-batch model, instead of one call per B samples (docs/DESIGN.md, "Fixed batch")."""

    def __init__(self, model: onnx.ModelProto, names: list[str]):
        graph = import_graph(model)
        tensors = graph.tensors()
        self.names = list(dict.fromkeys(names))
        outs = []
        for n in self.names:
            t = tensors[n]
            if isinstance(t, gs.Constant):
                raise ValueError(f"cannot tap constant '{n}'")
            if t.dtype is None:
                t.dtype = np.float32
            outs.append(t)
        self.fixed = fixed_batch(model)
        self.joins = self.fixed is None or all(
            t.shape is not None and len(t.shape) > 0 and t.shape[0] == self.fixed for t in outs)
        graph.outputs = outs
        graph.cleanup(remove_unused_graph_inputs=False)
        cut = finish(graph, model)
        opts = ort.SessionOptions()
        opts.log_severity_level = 4  # errors come back as exceptions, reported in one line
        self.session = inference_session(cut, opts, providers())
        self.inputs = {i.name for i in self.session.get_inputs()}

    def __call__(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feeds = {k: v for k, v in feeds.items() if k in self.inputs}
        n = len(next(iter(feeds.values()))) if feeds else 0
        b = self.fixed
        if b is None or n == b or not self.joins or n % b:
            return dict(zip(self.names, self._run(feeds)))
        runs = [self._run({k: v[i:i + b] for k, v in feeds.items()}) for i in range(0, n, b)]
        return {name: np.concatenate([r[j] for r in runs]) for j, name in enumerate(self.names)}

    def _run(self, feeds: dict[str, np.ndarray]) -> list:
        try:
            return self.session.run(self.names, feeds)
        except Exception as exc:  # a run-time shape error of the model (a Reshape or Tile that cannot be)
            raise UserError(f"running the model on the calibration data failed at {runtime_message(exc)}") from None
