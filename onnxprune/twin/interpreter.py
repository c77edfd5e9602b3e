"""A torch twin of the normalised ONNX graph: the same computation, differentiable, with gates.

`Twin(analysis)` is a `torch.nn.Module` that interprets `analysis.graph` (the normalised model the
analyzer and the rewriter work on) node by node with torch ops. Constants become buffers on the
chosen device (floating ones in the chosen dtype). Every consumer slice the rewriter scales (edits
of kind 'consumer' and 'grouped_consumer') is multiplied in the forward pass by the *gate* of its
channel class, and so is every run-time input the masked reference masks (edits of kind 'mask_input'):

    twin(inputs)                      == the original model
    twin(inputs, gates=keep * gamma)  == the masked reference, Rewriter(a, keep, gamma, masked=True)

where `keep, gamma = selection.class_arrays(analysis)`. `gates` may require grad: the gradient of
any function of the outputs with respect to every channel's gate comes out of one backward pass
(the Taylor scores of global imitation).

Re-fitted consumer weights (`Selection.replace`, `replace=` here) are used as given, with only the
removed channels' slices zeroed by `keep` (γ is already folded into them), exactly as the masked
reference does; they are not gated.

The interpreter covers the ops the analyzer has handlers for, plus the integer shape arithmetic
exporters emit around them (Shape, Gather, Concat, ConstantOfShape, Range, Equal, Where...). An op it
does not know raises NotImplementedError when the twin is built, naming the op and the node.
"""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
import torch

from ..analysis import Analysis
from .ops import lookup
from .ops.base import to_torch
from .step import Step

_CONSUMER_KINDS = ("consumer", "grouped_consumer")


class Twin(torch.nn.Module):
    """The normalised graph of `analysis`, as torch ops (see the module docstring).

    device: where constants live and the graph runs. dtype: cast every floating constant, input
    and Cast-to-float to this dtype (e.g. torch.float64 for gradient checks); None keeps the
    model's. replace: re-fitted consumer inputs, node index -> {input index: array} (as
    `Selection.replace`); keep: the per-class keep mask (`class_arrays(...)[0]`) that zeroes the
    removed channels' slices of the replaced nodes' consumer weights, as the masked reference does.
    """

    def __init__(self, analysis: Analysis, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
                 replace: dict[int, dict[int, np.ndarray]] | None = None, keep: np.ndarray | None = None):
        super().__init__()
        self.analysis = analysis
        self.register_buffer("_anchor", torch.zeros(0, device=device), persistent=False)
        self.float_dtype = dtype
        self.n_classes = len(analysis.class_of)
        graph = analysis.graph
        opset = next((imp.version for imp in analysis.model.opset_import if imp.domain in ("", "ai.onnx")), 0)
        self.input_names = [t.name for t in graph.inputs]
        self._consts: dict[str, str] = {}  # tensor name -> buffer name
        self._n_buffers = 0
        self.steps: list[Step] = []
        nodes = list(graph.nodes)
        for i, node in enumerate(nodes):
            domain = "" if node.domain in (None, "", "ai.onnx") else node.domain
            fn = lookup(domain, node.op)
            if fn is None:
                raise NotImplementedError(
                    f"Twin: op '{domain + '::' if domain else ''}{node.op}' of node '{node.name}' is not supported")
            if any(isinstance(v, gs.Graph) for v in node.attrs.values()):
                raise NotImplementedError(f"Twin: {node.op} node '{node.name}' has a subgraph (not supported)")
            step = Step(i, node, fn, opset, self)
            for t in node.inputs:
                step.inputs.append(None if t.is_empty() else self._ref(t))
            self.steps.append(step)
        self.output_refs = [self._ref(t) for t in graph.outputs]

        # gates: class index per weight element, broadcast against the weight
        self._gated: dict[tuple[int, int], list[str]] = {}
        replaced = set(replace or {})
        for node_id, values in (replace or {}).items():
            step = self.steps[node_id]
            for index, value in values.items():
                while len(step.inputs) <= index:
                    step.inputs.append(None)
                step.inputs[index] = ("const", self._buffer(f"refit_{node_id}_{index}", value))
        # run-time inputs multiplied by their channels' gates on the last axis (edit 'mask_input': a product
        # summing over channels with no weight, docs/DESIGN.md, "Dims within heads")
        self._gated_inputs: dict[tuple[int, int], str] = {}
        for e in analysis.edits:
            if e.kind == "mask_input":
                name = f"input_gate_index_{len(self._gated_inputs)}"
                cls = analysis.class_of[np.asarray(e.labels)]
                self.register_buffer(name, torch.as_tensor(cls, dtype=torch.long, device=self.device),
                                     persistent=False)
                self._gated_inputs[(e.node, e.input)] = name
                continue
            if e.kind not in _CONSUMER_KINDS:
                continue
            step = self.steps[e.node]
            ref = step.inputs[e.input] if e.input < len(step.inputs) else None
            if ref is None:
                continue  # an absent optional input
            w = getattr(self, ref[1]) if ref[0] == "const" else None
            if w is None:
                raise ValueError(f"Twin: consumer weight {e.input} of node '{step.name}' is not a constant")
            cls = self._class_index(e, tuple(w.shape))
            if e.node in replaced:
                if keep is not None:  # keep only, γ is folded into the re-fitted values
                    scale = torch.as_tensor(np.asarray(keep, dtype=bool)[cls], device=self.device).to(w.dtype)
                    step.inputs[e.input] = ("const", self._buffer(f"masked_{e.node}_{e.input}", w * scale))
                continue
            name = f"gate_index_{sum(map(len, self._gated.values()))}"
            self.register_buffer(name, torch.as_tensor(cls, dtype=torch.long, device=self.device), persistent=False)
            self._gated.setdefault((e.node, e.input), []).append(name)
        self._last_use = self._plan()

    @property
    def device(self) -> torch.device:
        """Where the twin runs (follows `.to(device)`)."""
        anchor = self._anchor
        assert isinstance(anchor, torch.Tensor)
        return anchor.device

    def gates_for(self, selection) -> torch.Tensor:
        """keep·γ per class for a `Selection`: the gates that make the twin the masked reference."""
        keep, gamma = selection.class_arrays(self.analysis)
        dtype = self.float_dtype or torch.float32
        return torch.as_tensor(keep * gamma, dtype=dtype, device=self.device)

    # ----- construction helpers ------------------------------------------------------------------
    def _buffer(self, key: str, value) -> str:
        self._n_buffers += 1
        name = f"c{self._n_buffers}_" + "".join(ch if ch.isalnum() else "_" for ch in key)[:40]
        t = value if isinstance(value, torch.Tensor) else to_torch(value, self.device, self.float_dtype)
        self.register_buffer(name, t.to(self.device))
        return name

    def _ref(self, t) -> tuple[str, str]:
        if isinstance(t, gs.Constant):
            if t.name not in self._consts:
                self._consts[t.name] = self._buffer(t.name, np.asarray(t.values))
            return ("const", self._consts[t.name])
        return ("var", t.name)

    def _class_index(self, e, wshape: tuple) -> np.ndarray:
        """Class id per weight element (broadcastable to the weight) for a consumer edit."""
        classes = self.analysis.class_of[np.asarray(e.labels)]
        if e.kind == "grouped_consumer":
            cout, cin_g = wshape[0], wshape[1]
            out_per = cout // e.groups
            q = np.arange(cout) // out_per
            idx = classes[q[:, None] * cin_g + np.arange(cin_g)[None, :]]
            return idx.reshape((cout, cin_g) + (1,) * (len(wshape) - 2))
        shape = [1] * len(wshape)
        shape[e.axis] = -1
        return classes.reshape(shape)

    def _plan(self) -> dict[str, int]:
        """Last step reading each variable, so intermediate tensors are freed early."""
        last: dict[str, int] = {}
        for i, step in enumerate(self.steps):
            for ref in step.inputs:
                if ref is not None and ref[0] == "var":
                    last[ref[1]] = i
        return last

    # ----- running -------------------------------------------------------------------------------
    def forward(self, inputs: dict, gates: torch.Tensor | None = None,
                outputs: list[str] | None = None, weights: dict[tuple[int, int], torch.Tensor] | None = None
                ) -> list[torch.Tensor]:
        """Run the graph. `inputs`: graph input name -> tensor (or array). `gates`: [n_classes]
        floats, indexed by class id (class 0, the fixed channel, is never gated). `outputs`: tensor
        names to return instead of the graph outputs (any intermediate tensor). `weights`: (step, input)
        -> a tensor used instead of that constant input for this call (gated like it)."""
        return self.resume(self.start(inputs), gates, outputs, weights)

    def start(self, inputs: dict) -> TwinState:
        """The state before the first step: the graph inputs on the twin's device."""
        env: dict[str, torch.Tensor] = {}
        for name in self.input_names:
            if name not in inputs:
                raise KeyError(f"Twin: missing graph input '{name}'")
            x = inputs[name]
            x = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))
            if self.float_dtype is not None and x.is_floating_point():
                x = x.to(self.float_dtype)
            env[name] = x.to(self.device)
        return TwinState(env, 0)

    def advance(self, state: TwinState, stop: int, gates: torch.Tensor | None = None,
                weights: dict[tuple[int, int], torch.Tensor] | None = None) -> TwinState:
        """The state before step `stop`: the steps from `state`'s up to `stop` run once, and only the
        tensors that later steps (or the graph outputs) read are kept. Running the rest many times from
        it (`resume`) costs only the rest: every candidate of a group shares the network before the group."""
        need = {r[1] for step in self.steps[stop:] for r in step.inputs if r is not None and r[0] == "var"}
        need |= {r[1] for r in self.output_refs if r[0] == "var"}
        env = self._run(dict(state.env), state.step, stop, self._gate_vector(gates), weights, need)
        return TwinState({k: v for k, v in env.items() if k in need}, stop)

    def resume(self, state: TwinState, gates: torch.Tensor | None = None, outputs: list[str] | None = None,
               weights: dict[tuple[int, int], torch.Tensor] | None = None) -> list[torch.Tensor]:
        """Run the steps from `state` to the end (as `forward`); `state` is not changed."""
        refs = self.output_refs if outputs is None else \
            [("const", self._consts[n]) if n in self._consts else ("var", n) for n in outputs]
        keep = {r[1] for r in refs if r[0] == "var"}
        env = self._run(dict(state.env), state.step, len(self.steps), self._gate_vector(gates), weights, keep)
        result = []
        for ref in refs:
            if ref[0] == "const":
                result.append(getattr(self, ref[1]))
            elif ref[1] not in env:
                raise KeyError(f"Twin: tensor '{ref[1]}' is not computed by the graph")
            else:
                result.append(env[ref[1]])
        return result

    def _gate_vector(self, gates: torch.Tensor | None) -> torch.Tensor | None:
        if gates is None:
            return None
        g = torch.as_tensor(gates, device=self.device)
        if g.shape != (self.n_classes,):
            raise ValueError(f"Twin: gates must have shape [{self.n_classes}], got {list(g.shape)}")
        return torch.cat([torch.ones(1, dtype=g.dtype, device=g.device), g[1:]])

    def _run(self, env: dict, first: int, stop: int, g: torch.Tensor | None, weights, keep: set) -> dict:
        extra: dict[int, list] = {}
        for (n, j), w in sorted((weights or {}).items(), key=lambda kv: kv[0]):
            if j >= len(self.steps[n].inputs):
                extra.setdefault(n, []).append((j, w))
        for i in range(first, stop):
            step = self.steps[i]
            args: list[torch.Tensor | None] = []
            for j, ref in enumerate(step.inputs):
                if ref is None:
                    args.append(None)
                elif ref[0] == "const":
                    w = getattr(self, ref[1])
                    if weights is not None and (i, j) in weights:  # in the dtype of the constant it stands for
                        w = weights[(i, j)].to(w.dtype)
                    if g is not None and (i, j) in self._gated:
                        for idx_name in self._gated[(i, j)]:
                            w = w * g[getattr(self, idx_name)].to(w.dtype)
                    args.append(w)
                else:
                    if ref[1] not in env:
                        raise KeyError(f"Twin: tensor '{ref[1]}' is not in the state (step {i}, '{step.name}')")
                    x = env[ref[1]]
                    if g is not None and (i, j) in self._gated_inputs:
                        x = x * g[getattr(self, self._gated_inputs[(i, j)])].to(x.dtype)
                    args.append(x)
            for j, w in extra.get(i, ()):  # an absent optional input given (e.g. a re-fitted bias), in the
                like = next((a for a in args if a is not None and a.is_floating_point()), None)  # node's float dtype
                args += [None] * (j - len(args)) + [w if like is None else w.to(like.dtype)]
            out = step.fn(step, args)
            if isinstance(out, torch.Tensor):
                out = [out]
            for name, t in zip(step.outputs, out):
                if name:
                    env[name] = t
            for ref in step.inputs:
                if ref is not None and ref[0] == "var" and self._last_use.get(ref[1]) == i and ref[1] not in keep:
                    env.pop(ref[1], None)
        return env


class TwinState:
    """The tensors live before step `step` of a twin's run (`Twin.start`, `Twin.advance`)."""

    def __init__(self, env: dict[str, torch.Tensor], step: int):
        self.env, self.step = env, step
