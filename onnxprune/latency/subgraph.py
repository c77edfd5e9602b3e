"""The part of a graph one group's width acts on, cut out as a model of its own (docs/DESIGN.md,
"Latency").

A node *touches* a group when one of its input or output tensors carries the group's channels: its
producers, the carriers between (BatchNorm, activations, depthwise Conv, residual Add...), and its
consumers. Shape arithmetic fed only from those nodes (Shape → Gather → Mul → a Reshape target) goes
with them, so that it follows the pruned width. The cut has the tensors the touching nodes read from
outside as its inputs and what they hand on as its outputs; it is fed with the values those tensors take
in the original network.

`stand_in` is a keep mask with exactly the given number of channels per group (each block its quota,
every segment one channel at least): latency depends on the widths only, not on which channels stay.
"""
from __future__ import annotations

import numpy as np
import onnx

from ..analysis import Analysis
from ..rewrite import Rewriter


def tensor_groups(analysis: Analysis) -> dict[str, set[int]]:
    """Tensor name -> the groups whose channels it carries."""
    roots, owner = analysis.class_of, analysis.group_of_class
    out: dict[str, set[int]] = {}
    for name, layout in analysis.layouts.items():
        if layout is None:
            continue
        gids = {owner[c] for c in set(roots[np.asarray(layout).ravel()].tolist()) if c in owner}
        if gids:
            out[name] = gids
    return out


def touching(analysis: Analysis) -> dict[int, list[str]]:
    """Group id -> names of the nodes its width acts on, in graph order (shape arithmetic included)."""
    carried = tensor_groups(analysis)
    inits = {t.name for t in analysis.model.graph.initializer}
    nodes = list(analysis.model.graph.node)
    producer = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    members: dict[int, set[int]] = {g.id: set() for g in analysis.groups}
    for i, n in enumerate(nodes):
        for t in list(n.input) + list(n.output):
            if t and t not in inits:
                for gid in carried.get(t, ()):
                    members[gid].add(i)
    out: dict[int, list[str]] = {}
    for g in analysis.groups:
        inside = members[g.id]
        changed = True
        while changed:  # shape arithmetic computed only from the inside, read by the inside
            changed = False
            read = {t for i in inside for t in nodes[i].input if t}
            for t in read:
                j = producer.get(t)
                if j is None or j in inside or t in carried:
                    continue
                srcs = [s for s in nodes[j].input if s and s not in inits]
                if srcs and all(producer.get(s) in inside for s in srcs):
                    inside.add(j)
                    changed = True
        out[g.id] = [nodes[i].name for i in sorted(inside)]
    return out


def stand_in(analysis: Analysis, counts: dict[int, int]) -> np.ndarray:
    """Per-class keep mask keeping exactly `counts[g]` channels of group g (others keep all)."""
    keep = np.ones(len(analysis.class_of), dtype=bool)
    roots = analysis.class_of
    for gid, k in counts.items():
        g = analysis.groups[gid]
        if k >= g.channels:
            continue
        pos = {c: i for i, c in enumerate(g.classes.tolist())}
        quota = g.quotas(int(k))
        chosen: list[int] = []
        for seg in analysis.segments:  # one channel of every segment first
            members = [pos[c] for c in roots[seg].tolist() if c in pos]
            if members and not set(members) & set(chosen) and 0 not in roots[seg].tolist():
                chosen.append(min(members))
        by_block = [sorted(i for i in chosen if g.blocks[i] == b) for b in range(len(quota))]
        kept: list[int] = []
        for b, q in enumerate(quota):
            members = np.flatnonzero(g.blocks == b).tolist()
            pick = by_block[b][:q]
            pick += [m for m in members if m not in pick][:q - len(pick)]
            kept += pick
        keep[g.classes] = False
        keep[g.classes[np.array(sorted(kept), dtype=np.int64)]] = True
    return keep


def variant(analysis: Analysis, counts: dict[int, int]) -> onnx.ModelProto:
    """The pruned graph of a stand-in selection with these counts."""
    keep = stand_in(analysis, counts)
    return Rewriter(analysis, keep, np.ones(len(keep))).run()


def cut(model: onnx.ModelProto, names: set[str], elem_types: dict[str, int],
        infos: dict[str, onnx.ValueInfoProto] | None = None) -> tuple[onnx.ModelProto, list[str]]:
    """The nodes `names` of `model` as a model of their own, and the names of its inputs. `elem_types`
    gives the element type of every tensor that may become an input or output; `infos`, when given, their
    value info (with shapes, so that the cut can be analysed)."""
    nodes = [n for n in model.graph.node if n.name in names]
    inits = {t.name: t for t in model.graph.initializer}
    produced = {o for n in nodes for o in n.output if o}
    used = list(dict.fromkeys(t for n in nodes for t in n.input if t))
    outside = {t for n in model.graph.node if n.name not in names for t in n.input}
    graph_outputs = {o.name for o in model.graph.output}
    inputs = [t for t in used if t not in produced and t not in inits]
    outputs = [o for n in nodes for o in n.output
               if o and (o in outside or o in graph_outputs or o not in used)]
    def info(t: str) -> onnx.ValueInfoProto:
        if infos is not None and t in infos:
            return infos[t]
        return onnx.helper.make_tensor_value_info(t, elem_types.get(t, onnx.TensorProto.FLOAT), None)

    graph = onnx.helper.make_graph(nodes, f"{model.graph.name}_cut", [info(t) for t in inputs],
                                   [info(t) for t in outputs], [inits[t] for t in used if t in inits])
    sub = onnx.helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    sub.functions.extend(model.functions)
    return sub, inputs


def value_infos(model: onnx.ModelProto) -> dict[str, onnx.ValueInfoProto]:
    """Tensor name -> value info (type and shape), from the model's inputs, outputs and value info."""
    return {vi.name: vi for vi in list(model.graph.value_info) + list(model.graph.output) + list(model.graph.input)
            if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type}


class Cut:
    """One group's cut of the original network, and its variants at other widths: rewritten as a model of
    its own (its analysis has the group, with the same producers and width), or, when its analysis does not
    find the group so, cut from the whole rewritten network."""

    def __init__(self, analysis: Analysis, gid: int, names: set[str], types: dict[str, int],
                 infos: dict[str, onnx.ValueInfoProto]):
        self.analysis, self.gid, self.names, self.types = analysis, gid, names, types
        self.model, self.inputs = cut(analysis.model, names, types, infos)
        self.sub: Analysis | None = None
        self.sub_gid = -1
        g = analysis.groups[gid]
        try:
            sub = Analysis(self.model)
        except Exception:  # noqa: BLE001 (the whole-network rewrite below is the general way)
            return
        for h in sub.prunable:
            if h.channels == g.channels and set(h.producers) == set(g.producers) and h.n_blocks == g.n_blocks:
                self.sub, self.sub_gid = sub, h.id
                break

    def at(self, width: int) -> onnx.ModelProto:
        if width >= self.analysis.groups[self.gid].channels:
            return self.model
        if self.sub is not None:
            return variant(self.sub, {self.sub_gid: width})
        return cut(variant(self.analysis, {self.gid: width}), self.names, self.types)[0]


def elem_types(model: onnx.ModelProto) -> dict[str, int]:
    """Tensor name -> element type, from the model's inputs, outputs and inferred value info."""
    out = {}
    for vi in list(model.graph.input) + list(model.graph.output) + list(model.graph.value_info):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
            out[vi.name] = vi.type.tensor_type.elem_type
    return out
