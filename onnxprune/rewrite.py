"""Emit the pruned graph, or the masked reference, for a selection.

A selection maps each channel *class* to kept/removed and a scale γ (see `selection.Selection`).
Pruned graph: producers, carriers and consumers lose the removed channels; consumers' input slices
of kept channels are scaled by γ. Masked reference: the original topology with removed channels'
consumer slices zeroed and kept ones scaled by γ — what the pruned graph must compute (a product that sums
over channels with no weight, Q·Kᵀ with `--attention dims`, gets a Mul by the gates on its input instead;
the pruned graph gets one by the kept γ where they are not all 1).
"""
from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from .analysis import Analysis, Edit
from .graph.export import finish
from .graph.normalise import import_graph


class Rewriter:
    def __init__(self, analysis: Analysis, keep: np.ndarray, gamma: np.ndarray, masked: bool = False,
                 replace: dict[int, dict[int, np.ndarray]] | None = None):
        """`keep`/`gamma` are indexed by class id (root atom); class 0 (fixed) is always kept.
        `replace[node][input]` gives re-fitted consumer weights/biases (original shapes, removed
        inputs zero); γ is already folded into them."""
        self.analysis = analysis
        self.roots = analysis.class_of
        self.keep, self.gamma, self.masked = keep, gamma, masked
        self.graph: gs.Graph = import_graph(analysis.model)
        self.nodes = list(self.graph.nodes)
        self._private: set[tuple[int, int]] = set()
        self._inserted = False   # nodes added (the masked reference's input masks): sort the graph again
        self.replaced = set(replace or {})
        self.output_names = {t.name for t in self.graph.outputs}
        for node_id, values in (replace or {}).items():
            node = self.nodes[node_id]
            for index, value in values.items():
                self.set_const(node, index, value)

    def keep_mask(self, labels: np.ndarray) -> np.ndarray:
        return self.keep[self.roots[np.asarray(labels)]]

    def gamma_of(self, labels: np.ndarray) -> np.ndarray:
        return self.gamma[self.roots[np.asarray(labels)]]

    def const_of(self, node, index: int) -> np.ndarray:
        return np.asarray(node.inputs[index].values)

    def set_const(self, node, index: int, value: np.ndarray) -> None:
        """Bind a new constant to one node input (never modifying a tensor another node shares); an
        absent optional input is added."""
        key = (id(node), index)
        if index >= len(node.inputs) or node.inputs[index].is_empty():
            while len(node.inputs) < index:
                node.inputs.append(gs.Variable.empty())
            const = gs.Constant(f"{node.name}__{index}", np.ascontiguousarray(value))
            if index < len(node.inputs):
                node.inputs[index] = const
            else:
                node.inputs.append(const)
            self._private.add(key)
            return
        old = node.inputs[index]
        if key in self._private:
            old.values = value
            return
        # a constant another node reads, or that is a graph output, keeps its name and value; a computed
        # input (a shape element) becomes a constant of its own name (its producer is cleaned up)
        shared = len(old.outputs) != 1 or old.name in self.output_names or not isinstance(old, gs.Constant)
        name = f"{old.name}__{node.name}_{index}" if shared else old.name
        node.inputs[index] = gs.Constant(name, np.ascontiguousarray(value))
        self._private.add(key)

    def _apply(self, edit: Edit) -> None:
        node = self.nodes[edit.node]
        if edit.kind == "call":
            if not self.masked and edit.fn is not None:
                edit.fn(node, self)
            return
        if edit.kind == "mask_input":
            self._mask_input(node, edit)
            return
        if self.masked and edit.kind in ("producer", "param"):
            return
        if edit.input >= len(node.inputs) or node.inputs[edit.input].is_empty():
            return  # an optional bias that is absent
        w = self.const_of(node, edit.input)
        keep = self.keep_mask(edit.labels)
        shape = [1] * w.ndim
        shape[edit.axis] = -1
        if edit.kind in ("producer", "param"):
            self.set_const(node, edit.input, np.take(w, np.flatnonzero(keep), axis=edit.axis))
            return
        gamma = 1.0 if edit.node in self.replaced else self.gamma_of(edit.labels)
        scale = np.where(keep, gamma, 0.0).astype(w.dtype)
        if edit.kind == "grouped_consumer":
            scaled = self._grouped(w, keep, scale, edit.groups)
        elif self.masked:
            scaled = w * scale.reshape(shape)
        else:
            scaled = np.take(w * scale.reshape(shape), np.flatnonzero(keep), axis=edit.axis)
        self.set_const(node, edit.input, scaled.astype(w.dtype))

    def _mask_input(self, node, edit: Edit) -> None:
        """Multiply a run-time input by its channels' keep·γ along its last axis (a product summing over
        channels: docs/DESIGN.md, "Dims within heads"); in the pruned graph by the kept channels' γ, and only
        where one differs from 1."""
        src = node.inputs[edit.input]
        keep, gamma = self.keep_mask(edit.labels), self.gamma_of(edit.labels)
        if self.masked:
            scale = np.where(keep, gamma, 0.0).astype(np.float32)
        elif np.all(gamma[keep] == 1.0):
            return
        else:
            scale = gamma[keep].astype(np.float32)
        dtype = src.dtype if src.dtype is not None else np.float32
        const = gs.Constant(f"{node.name}__mask_{edit.input}", scale.astype(dtype))
        out = gs.Variable(f"{src.name}__masked_{node.name}", dtype=src.dtype, shape=src.shape)
        self.graph.nodes.append(gs.Node("Mul", f"{node.name}__mask_{edit.input}", inputs=[src, const],
                                        outputs=[out]))
        node.inputs[edit.input] = out
        self._inserted = True

    def _grouped(self, w: np.ndarray, keep: np.ndarray, scale: np.ndarray, groups: int) -> np.ndarray:
        """Grouped Conv weight (Cout, Cin/g, ...): output filter o reads input block o // (Cout/g)."""
        cin_g = w.shape[1]
        out_per = w.shape[0] // groups
        blocks = []
        for q in range(groups):
            k = keep[q * cin_g:(q + 1) * cin_g]
            s = scale[q * cin_g:(q + 1) * cin_g].reshape([1, -1] + [1] * (w.ndim - 2))
            wq = w[q * out_per:(q + 1) * out_per] * s
            blocks.append(wq if self.masked else wq[:, np.flatnonzero(k)])
        return np.concatenate(blocks, axis=0)

    def run(self) -> onnx.ModelProto:
        for edit in self.analysis.edits:
            self._apply(edit)
        inputs = {t.name for t in self.graph.inputs}
        outputs = {t.name for t in self.graph.outputs}
        if not self.masked:
            for t in self.graph.tensors().values():  # channel counts changed: drop stale shapes
                if isinstance(t, gs.Variable) and t.name not in inputs | outputs:
                    t.shape = None
                    t.dtype = None
        if self._inserted:
            self.graph.toposort()
        self.graph.cleanup(remove_unused_graph_inputs=False)
        return finish(self.graph, self.analysis.model)
