"""Graph analysis: which channel axes must keep the same channel index set (channel groups).

Every producer (Conv, Gemm, MatMul with a constant weight...) creates one *atom* per output channel.
Each tensor carries a *layout*: an integer array with the tensor's rank whose entries are atom ids,
with size-1 axes where the tensor has no channel structure (so NCHW channels are `(1, C, 1, 1)`).
Op handlers (see `handlers/`) propagate layouts, unite atoms that must stay together (residual Add,
SE gate Mul), and record the *edits* the rewriter needs. Atoms united are one *channel*; channels of
producers linked by such unions form one *group*. Atom 0 stands for a channel that cannot change
(e.g. a graph input concatenated with pruned channels).
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..errors import UnsupportedModel
from ..graph.inputs import declared_dims, resolve_input_shapes, symbolic_inputs
from ..graph.normalise import const_value, fixed_shapes, import_graph, normalise, static_shape
from ..graph.params import count_params
from . import handlers
from .records import FIXED, Cost, Edit, Group

LAYER_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


class Analysis:
    """Channel groups of a model, plus what the rewriter and the cost model need."""

    def __init__(self, model: onnx.ModelProto, in_place: bool = False, input_shapes: dict | None = None,
                 attention: str = "heads", heads_at: frozenset[str] = frozenset()):
        """`in_place`: normalise `model` itself instead of a copy (for a model nobody else uses).
        `input_shapes`: name -> dims of inputs whose symbolic dims size layers (docs/DESIGN.md, "Input
        shapes"); they size the MACs only, the analysis and the model keep the symbolic shapes.
        `attention`: 'heads' (an attention block's channels are its heads) or 'dims' (the dims within every
        head; docs/DESIGN.md, "Dims within heads"). `heads_at`: with 'dims', the Reshape nodes whose split
        into heads is read as heads all the same (`attention_analysis`)."""
        if str(attention) not in ("heads", "dims"):
            raise ValueError(f"attention must be 'heads' or 'dims', not {attention!r}")
        self.attention, self.heads_at = str(attention), frozenset(heads_at)
        self.model = normalise(model, in_place)
        self.input_shapes = resolve_input_shapes(self.model, input_shapes) if input_shapes else {}
        self.cost_shapes = fixed_shapes(self.model, self.input_shapes) if self.input_shapes else {}
        declared = [d for d in declared_dims(self.model).values() if d]
        firsts = [d[0] for d in declared]
        # the batch, axis 0 of the inputs (docs/DESIGN.md, "Input shapes"): its symbols (not one that also sizes
        # another axis, as a sequence length does for `position_ids` [S] beside `input_ids` [B, S]), and its
        # size where it is fixed
        later = {x for d in declared for x in d[1:]}
        self.batch_symbols = {d for d in firsts if isinstance(d, str) and d != "?" and d not in later}
        sizes = {d for d in firsts if isinstance(d, int)} if not self.batch_symbols else set()
        self.fixed_batch = sizes.pop() if len(sizes) == 1 else 1
        given = {d[0] for d in self.input_shapes.values() if len(d)}
        self.given_batch = given.pop() if len(given) == 1 else 1
        self.graph: gs.Graph = import_graph(self.model)
        self.index = {id(n): i for i, n in enumerate(self.graph.nodes)}
        # initializers also listed as graph inputs can be overridden at run time: not weights we may edit
        self.overridable = {i.name for i in self.model.graph.input} & {t.name for t in self.model.graph.initializer}
        self.layouts: dict[str, np.ndarray] = {}
        self._parent: list[int] = [FIXED]
        self._frozen: dict[int, list[str]] = defaultdict(list)
        self.edits: list[Edit] = []
        self.costs: list[Cost] = []
        self.producer_atoms: list[tuple[str, np.ndarray]] = []
        self.consumer_labels: list[tuple[str, np.ndarray]] = []
        self.block_constraints: list[tuple[str, np.ndarray, int]] = []
        self.segments: list[np.ndarray] = []  # label vectors that must keep at least one channel
        # (node, label vector, n): the vector is cut into n equal pieces that must keep equal counts
        self.equal_pieces: list[tuple[str, np.ndarray, int]] = []
        self.deferred: list[Callable[[], None]] = []
        # (one atom per head, channels per head): attention heads tied by a Reshape into [..., H, D]
        self.heads: list[tuple[np.ndarray, int]] = []
        # attention='dims': the products summing over channels (node index, left and right operand's labels)
        self.contractions: list[tuple[int, np.ndarray, np.ndarray]] = []
        # reading -> Reshape node splitting channels into heads -> an atom of each head ("heads"), or the [H, D]
        # atoms of the split ("dims")
        self.splits: dict[str, dict[str, np.ndarray]] = {"heads": {}, "dims": {}}
        # ids of the nodes whose handler checks a shape argument computed at run time (handlers/shape.py)
        self.shape_checked: set[int] = set()
        # node with subgraphs -> number of Conv/ConvTranspose/Gemm/MatMul nodes inside them (not analysed)
        self.subgraph_layers: dict[str, int] = {}
        self._run()

    # ----- union-find over atoms -------------------------------------------------------------
    def new_atoms(self, n: int) -> np.ndarray:
        start = len(self._parent)
        self._parent.extend(range(start, start + n))
        return np.arange(start, start + n, dtype=np.int64)

    def find(self, a: int) -> int:
        parent = self._parent
        root = a
        while parent[root] != root:
            root = parent[root]
        while parent[a] != root:
            parent[a], a = root, parent[a]
        return root

    def roots(self) -> np.ndarray:
        return np.array([self.find(a) for a in range(len(self._parent))], dtype=np.int64)

    def unite(self, a: np.ndarray, b: np.ndarray, node, what: str = "") -> None:
        """Positional union of two broadcast-compatible label arrays."""
        a, b = np.broadcast_arrays(a, b)
        for x, y in zip(a.ravel().tolist(), b.ravel().tolist()):
            if x == y:
                continue
            if x == FIXED or y == FIXED:
                self.freeze(np.array([x, y]), node, what or "combined with channels that cannot change")
                continue
            rx, ry = self.find(x), self.find(y)
            if rx != ry:
                self._parent[max(rx, ry)] = min(rx, ry)

    # ----- what handlers use --------------------------------------------------------------
    def layout(self, tensor) -> np.ndarray | None:
        if isinstance(tensor, gs.Constant) or tensor is None:
            return None
        return self.layouts.get(tensor.name)

    def set_layout(self, tensor, labels: np.ndarray | None) -> None:
        if labels is not None and tensor is not None and not tensor.is_empty():
            self.layouts[tensor.name] = labels

    def freeze(self, labels, node, reason: str) -> None:
        where = f"{node.op} node '{node.name}'" if node is not None else "graph"
        for a in set(np.asarray(labels).ravel().tolist()) - {FIXED}:
            self._frozen[a].append(f"{where}: {reason}")

    def freeze_node(self, node, reason: str) -> None:
        """The node is not understood: freeze everything flowing into it; its outputs carry no channels."""
        for t in node.inputs:
            lab = self.layout(t)
            if lab is not None:
                self.freeze(lab, node, reason)

    def node_id(self, node) -> int:
        return self.index[id(node)]

    def edit(self, kind: str, node, **kw) -> None:
        self.edits.append(Edit(kind, self.node_id(node), **kw))
        if kind in ("consumer", "grouped_consumer", "mask_input"):  # a reader of the channels: keeps one
            self.consumer_labels.append((node.name, kw["labels"]))
            self.segments.append(kw["labels"])

    def produce(self, node, n: int) -> np.ndarray:
        atoms = self.new_atoms(n)
        self.producer_atoms.append((node.name, atoms))
        return atoms

    def cost(self, node, macs: int | None, *factors) -> None:
        """Record a node's MACs per sample; None when its size is symbolic (unknown, never counted as 0)."""
        self.costs.append(Cost(node.name, node.op, int(macs or 0), [f for f in factors if f is not None],
                               known=macs is not None))

    def cost_shape(self, tensor) -> tuple | None:
        """The shape that sizes a layer's MACs: inferred with the given input shapes when there are some."""
        if tensor is not None and tensor.name in self.cost_shapes:
            return self.cost_shapes[tensor.name]
        return static_shape(tensor)

    def sample_size(self, tensor, trailing: int = 0) -> int | None:
        """Elements per sample of `tensor` without its last `trailing` axes (the rows of a layer's input or
        output; docs/DESIGN.md, "Input shapes"), None when a size is unknown. The batch may be on any axis and merged
        with others: a dim written with the inputs' batch symbol (`batch`, `16*batch` after a Reshape to
        [S·B, E], or on axis 1 of a sequence-first [S, B, E]) counts its factor; without one an unnamed
        symbolic axis 0 is the batch, and a shape of numbers holds a whole (fixed) batch."""
        if tensor is None:
            return None
        shape: tuple | list | None
        if tensor.name in self.cost_shapes:
            shape, symbols, batch = self.cost_shapes[tensor.name], set(), self.given_batch
        else:
            shape, symbols, batch = getattr(tensor, "shape", None), self.batch_symbols, self.fixed_batch
        if shape is None:
            return None
        dims = list(shape)[:len(shape) - trailing] if trailing else list(shape)
        factors = [_batch_factor(d, symbols) for d in dims]
        per_sample = any(f is not None for f in factors)
        total = 1
        for i, (d, f) in enumerate(zip(dims, factors)):
            if f is not None:
                total *= f
            elif isinstance(d, (int, np.integer)) and d >= 0:
                total *= int(d)
            elif i == 0 and not per_sample:
                per_sample = True  # an unnamed symbolic batch axis
            else:
                return None
        if per_sample:
            return total
        return total // batch if total % batch == 0 else None

    def const(self, tensor):
        return None if tensor is None or tensor.name in self.overridable else const_value(tensor)

    shape = staticmethod(static_shape)

    # ----- the pass --------------------------------------------------------------------------
    def _subgraph_reads(self, node) -> None:
        """A node with subgraphs (If, Loop, Scan): the subgraphs are not analysed, so every channel-carrying
        tensor they read from this graph (explicitly or by name from the outer scope) is frozen, and their
        Conv/Gemm/MatMul layers are counted (docs/DESIGN.md, "Subgraphs")."""
        reads: dict[str, None] = {}
        layers = 0
        stack = [g for g in node.attrs.values() if isinstance(g, gs.Graph)]
        while stack:
            sub = stack.pop()
            for n in sub.nodes:
                layers += n.op in LAYER_OPS
                reads.update((t.name, None) for t in n.inputs if not t.is_empty())
                stack.extend(g for g in n.attrs.values() if isinstance(g, gs.Graph))
        for name in reads:
            lab = self.layouts.get(name)
            if lab is not None:
                self.freeze(lab, node, f"'{name}' is read inside a subgraph, which onnxprune does not analyse")
        if layers:
            self.subgraph_layers[node.name] = layers

    def _run(self) -> None:
        self._refuse_empty_layers()
        for node in self.graph.nodes:
            if any(isinstance(v, gs.Graph) for v in node.attrs.values()):
                self._subgraph_reads(node)
            handler = handlers.lookup(node)
            if handler is None:
                if any(self.layout(t) is not None for t in node.inputs):
                    self.freeze_node(node, f"op '{node.domain + '::' if node.domain else ''}{node.op}' "
                                           "is not supported")
                continue
            handler(node, self)
        for out in self.graph.outputs:
            lab = self.layout(out)
            if lab is not None:
                self.freeze(lab, None, f"reaches graph output '{out.name}'")
        self._freeze_constant_outputs()
        for check in self.deferred:
            check()
        self.groups = self._build_groups()

    def _refuse_empty_layers(self) -> None:
        """A Conv, Gemm or MatMul whose constant weight has a zero dimension (no output or no input channels)
        computes an empty tensor: there is nothing to prune, and the channel bookkeeping has no channel to
        start from. Refused, naming the node."""
        for node in self.graph.nodes:
            if node.op in ("Conv", "ConvTranspose", "Gemm", "MatMul") and len(node.inputs) > 1:
                w = self.const(node.inputs[1])
                if w is not None and 0 in w.shape:
                    raise UnsupportedModel(f"{node.op} node '{node.name}': its weight '{node.inputs[1].name}' has "
                                           f"shape {list(w.shape)}, a layer with no channels; remove it from the model")

    def _freeze_constant_outputs(self) -> None:
        """A constant that is also a graph output (a weight exposed as an output) must keep its value: every
        edit that would slice or scale it freezes the channels it touches (docs/DESIGN.md, "Channel groups")."""
        outputs = {t.name for t in self.graph.outputs if isinstance(t, gs.Constant)}
        if not outputs:
            return
        nodes = self.graph.nodes
        for e in self.edits:
            node = nodes[e.node]
            if e.kind == "call":  # it may rewrite any constant input (a Reshape's target, a Split's sizes)
                exposed = next((t.name for t in node.inputs if t.name in outputs), None)
                for x in (list(node.inputs) + list(node.outputs)) if exposed else []:
                    lab = self.layout(x)
                    if lab is not None:
                        self.freeze(lab, node, f"its constant '{exposed}' is a graph output")
            elif e.input < len(node.inputs) and node.inputs[e.input].name in outputs:
                self.freeze(e.labels, node, f"its constant '{node.inputs[e.input].name}' is a graph output")

    def _build_groups(self) -> list[Group]:
        roots = self.roots()
        self.class_of = roots
        link: dict[int, int] = {}

        def find(c):
            while link.get(c, c) != c:
                c = link[c]
            return c

        def join(cls: np.ndarray) -> None:
            base = find(int(cls[0]))
            for c in cls[1:].tolist():
                r = find(c)
                if r != base:
                    link[r] = base

        produced = set()
        for _, atoms in self.producer_atoms:
            join(roots[atoms])
            produced.update(roots[atoms].tolist())
        for _, labels, _ in self.block_constraints:
            # a grouped Conv on a concatenation reads several producers' channels in equal-count blocks: one group
            cls = np.array([c for c in roots[labels].tolist() if c in produced], dtype=np.int64)
            if len(cls) > 1:
                join(cls)
        members: dict[int, dict[int, None]] = {}
        prods: dict[int, list[str]] = defaultdict(list)
        for name, atoms in self.producer_atoms:
            cls = roots[atoms]
            g = find(int(cls[0]))
            members.setdefault(g, {}).update(dict.fromkeys(cls.tolist()))
            prods[g].append(name)
        frozen: dict[int, list[str]] = defaultdict(list)
        for atom, reasons in self._frozen.items():
            frozen[find(int(roots[atom]))].extend(reasons)
        cons: dict[int, list[str]] = defaultdict(list)
        for name, labels in self.consumer_labels:
            for g in {find(int(c)) for c in roots[np.asarray(labels).ravel()].tolist() if c != FIXED}:
                if name not in cons[g]:
                    cons[g].append(name)
        groups = []
        for gid, (g, member_set) in enumerate(members.items()):
            classes = np.array(list(member_set), dtype=np.int64)
            reasons = list(dict.fromkeys(frozen.get(g, [])))
            if not cons.get(g) and not reasons:
                reasons.append("no consumer reads these channels")
            blocks, why = self._blocks_for(classes, roots)
            if not why:
                blocks, why = self._equal_pieces_for(classes, roots, blocks)
            if why:
                reasons.append(why)
            parts = self._parts_for(classes, roots) if blocks.max(initial=0) == 0 else None
            groups.append(Group(gid, classes, prods[g], cons.get(g, []), bool(reasons), reasons,
                                blocks if parts is None else parts, proportional=parts is not None))
        class_group: dict[int, int] = {}
        for grp in groups:
            for c in grp.classes.tolist():
                class_group[c] = grp.id
        self.group_of_class = class_group
        for atoms, unit in self.heads:  # docs/DESIGN.md, "Attention heads"
            for gid in {class_group[c] for c in roots[atoms].tolist() if c in class_group}:
                grp = groups[gid]
                grp.unit = unit if grp.kind != "heads" else min(grp.unit, unit)
                grp.kind = "heads"
        read = {int(c) for e in self.edits if e.kind in ("consumer", "grouped_consumer") for c in roots[e.labels]}
        for grid in self.head_dims:  # docs/DESIGN.md, "Dims within heads": V dims are read by a layer with
            for gid in {class_group[c] for c in roots[grid].ravel().tolist() if c in class_group}:  # weights
                v = bool(read & set(groups[gid].classes.tolist()))
                groups[gid].kind, groups[gid].unit = "v_dims" if v else "qk_dims", grid.shape[0]
        for _, left, _ in self.contractions:
            for gid in {class_group[c] for c in roots[left].tolist() if c in class_group}:
                groups[gid].kind = "qk_dims"
        for cost in self.costs:
            touched = {class_group[c] for f in cost.factors for c in np.unique(roots[f]).tolist() if c in class_group}
            for gid in touched:
                groups[gid].macs += cost.macs
        return groups

    def _parts_for(self, classes: np.ndarray, roots: np.ndarray) -> np.ndarray | None:
        """Pieces cut from the group by Split/Slice or read by separate consumers, when they partition
        it: each piece then keeps the same share of its channels (so MACs follow the kept count)."""
        pos = {c: i for i, c in enumerate(classes.tolist())}
        pieces = set()
        for seg in self.segments:
            members = frozenset(pos[c] for c in roots[seg].tolist() if c in pos)
            if 0 < len(members) < len(classes):
                pieces.add(members)
        if len(pieces) < 2 or sum(len(p) for p in pieces) != len(classes) or \
                len(frozenset().union(*pieces)) != len(classes):
            return None
        parts = np.empty(len(classes), dtype=np.int64)
        for i, piece in enumerate(sorted(pieces, key=min)):
            parts[list(piece)] = i
        return parts

    def _blocks_for(self, classes: np.ndarray, roots: np.ndarray) -> tuple[np.ndarray, str]:
        """Blocks of equal kept counts from the grouped Convs that read (or produce) these channels. A grouped
        Conv reading only part of the group (a Split piece) cuts the rest into cells of its block size too
        (stricter than needed, but expressible); several grouped Convs refine one another's blocks."""
        blocks = np.zeros(len(classes), dtype=np.int64)
        pos = {c: i for i, c in enumerate(classes.tolist())}
        for name, labels, groups in self.block_constraints:
            cls = roots[labels]
            mine = [pos.get(int(c)) for c in cls.tolist()]
            if all(m is None for m in mine):
                continue
            why = f"grouped Conv '{name}' reads these channels in blocks that cannot keep equal counts"
            if any(m is None for m in mine) or len(set(mine)) != len(mine) or len(mine) % groups:
                return blocks, f"grouped Conv '{name}' mixes these channels with ones that cannot change"
            per = len(mine) // groups
            this = np.full(len(classes), -1, dtype=np.int64)
            this[np.array(mine)] = np.arange(len(mine)) // per
            rest = np.flatnonzero(this < 0)
            if len(rest) % per:
                return blocks, why
            this[rest] = groups + np.arange(len(rest)) // per
            _, cell = np.unique(blocks * (int(this.max()) + 1) + this, return_inverse=True)
            sizes = np.bincount(cell)
            if sizes.min() != sizes.max():
                return blocks, why
            blocks = cell.astype(np.int64).reshape(-1)
        return blocks, ""

    def _equal_pieces_for(self, classes: np.ndarray, roots: np.ndarray, blocks: np.ndarray) -> tuple[np.ndarray, str]:
        """Refine `blocks` so that each piece of every equal-pieces constraint on this group keeps the same
        count: possible when each class lies in one piece and all occur equally often. Classes the sliced
        tensor does not hold are cut into n equal cells too (stricter than needed, but expressible)."""
        pos = {c: i for i, c in enumerate(classes.tolist())}
        for name, vec, n in self.equal_pieces:
            cls = roots[vec]
            mine = [pos.get(int(c)) for c in cls.tolist()]
            if all(m is None for m in mine):
                continue
            why = (f"Slice '{name}' (bounds computed at run time) cuts these channels into pieces that cannot keep "
                   "equal counts")
            if any(m is None for m in mine):
                return blocks, why
            at = np.array(mine, dtype=np.int64)
            piece = np.arange(len(vec)) // (len(vec) // n)
            of_class = np.full(len(classes), -1)
            of_class[at] = piece
            counts = np.bincount(at, minlength=len(classes))[np.unique(at)]
            if not np.array_equal(of_class[at], piece) or counts.min() != counts.max():
                return blocks, why
            rest = np.flatnonzero(of_class < 0)  # classes the slice does not see: equal cells of their own
            if len(rest):
                if len(rest) % n:
                    return blocks, why
                of_class[rest] = n + np.arange(len(rest)) // (len(rest) // n)
            _, cell = np.unique(blocks * n + of_class, return_inverse=True)
            sizes = np.bincount(cell)
            if sizes.min() != sizes.max():
                return blocks, why
            blocks = cell.astype(np.int64)
        return blocks, ""

    # ----- conveniences for callers ------------------------------------------------------
    @property
    def head_dims(self) -> list[np.ndarray]:
        """The [H, D] atoms of every split read as dims within heads (docs/DESIGN.md, "Dims within heads")."""
        return list(self.splits["dims"].values())

    @property
    def prunable(self) -> list[Group]:
        return [g for g in self.groups if not g.frozen]

    @property
    def total_macs(self) -> int:
        """MACs per sample of the layers whose size is known (see `unknown_costs`)."""
        return sum(c.macs for c in self.costs)

    @property
    def unknown_costs(self) -> list[Cost]:
        """Layers whose MACs are unknown because their sizes are symbolic."""
        return [c for c in self.costs if not c.known]

    def unknown_cost_reason(self) -> str:
        """Which layers have unknown MACs and which input needs a shape, in one sentence ('' if none)."""
        unknown = self.unknown_costs
        if not unknown:
            return ""
        layers = ", ".join(f"{c.op} '{c.node}'" for c in unknown[:3]) + \
            (f" and {len(unknown) - 3} more" if len(unknown) > 3 else "")
        need = self._inputs_needing_shapes()
        if need:
            which = ", ".join(f"'{n}' [{', '.join(map(str, d))}]" for n, d in need.items())
            example = " ".join(f"{n}=" + ",".join(str(x) if isinstance(x, int) else "1" if i == 0 else str(x)
                                                  for i, x in enumerate(d)) for n, d in need.items())
            return (f"the MACs of {len(unknown)} layers ({layers}) are unknown: their sizes depend on the symbolic "
                    f"dimensions of input {which}; give its shape ({example}, in numbers)")
        stop = self.shape_inference_stop()
        if stop is not None:
            domain = f" of domain '{stop.domain}'" if stop.domain not in ("", "ai.onnx") else ""
            return (f"the MACs of {len(unknown)} layers ({layers}) are unknown: shape inference stops at "
                    f"{stop.op} '{stop.name}'{domain}, whose output shapes could not be inferred from its "
                    "inputs' shapes")
        return (f"the MACs of {len(unknown)} layers ({layers}) are unknown: their sizes could not be inferred "
                "from the input shapes")

    def input_shapes_would_help(self) -> bool:
        """Whether giving input shapes may size the layers of unknown MACs: some input has symbolic dims, or
        shape inference does not stop at a node whose inputs are all sized."""
        return bool(self._inputs_needing_shapes()) or self.shape_inference_stop() is None

    def _inputs_needing_shapes(self) -> dict:
        """The inputs with symbolic dims that no given input shape sizes: name -> declared dims."""
        return {n: d for n, d in symbolic_inputs(self.model).items() if n not in self.input_shapes}

    def shape_inference_stop(self):
        """Where ONNX shape inference gave up on the way to a layer of unknown MACs: the first node (in graph
        order) among that layer's ancestors whose inputs all have known shapes and an output does not (an op of
        a custom domain, or one it cannot size); None when there is none."""
        def known(t) -> bool:  # the batch axis may stay symbolic: MACs are per sample
            shape = self.cost_shape(t)
            return shape is not None and all(d is not None for d in shape[1:])
        unknown = {c.node for c in self.unknown_costs}
        order = {id(n): i for i, n in enumerate(self.graph.nodes)}
        frontier = [n for n in self.graph.nodes if n.name in unknown]
        seen = set()
        stops = []
        while frontier:
            node = frontier.pop()
            if id(node) in seen:
                continue
            seen.add(id(node))
            ins = [t for t in node.inputs if not t.is_empty()]
            if node.op != "Constant" and all(known(t) for t in ins) and any(not known(t) for t in node.outputs):
                stops.append(node)
            frontier += [p for t in ins for p in t.inputs]
        return min(stops, key=lambda n: order[id(n)]) if stops else None

    def total_params(self) -> int:
        return count_params(self.model)


def _batch_factor(dim, symbols: set[str]) -> int | None:
    """K for a dim written `batch`, `K*batch` or `batch*K` with a batch symbol; None for any other dim."""
    if not isinstance(dim, str) or not symbols:
        return None
    text = dim.replace(" ", "")
    if text in symbols:
        return 1
    parts = text.split("*")
    if len(parts) == 2:
        for sym, k in (parts, parts[::-1]):
            if sym in symbols and k.isdigit():
                return int(k)
    return None


def attention_analysis(model: onnx.ModelProto, input_shapes: dict | None = None) -> Analysis | None:
    """`--attention auto` (docs/DESIGN.md, "Dims within heads"): the analysis of `model` (a copy) with every
    split into heads read as dims except where an attention block keeps the heads reading: where its heads
    prune but one of its splits read as dims would freeze (a head size read at run time for the scale) or is
    not read as dims (a fused projection). The heads analysis when the model splits nothing into heads; None
    when it has no product of two run-time tensors (no attention: analyse it as usual)."""
    consts = {t.name for t in model.graph.initializer} | \
        {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    if not any(n.op_type == "MatMul" and not {n.input[0], n.input[1]} & consts for n in model.graph.node):
        return None   # no product of two run-time tensors: no attention (and no second analysis)
    heads = Analysis(model, input_shapes=input_shapes)
    if not heads.splits["heads"]:
        return heads
    dims = Analysis(model, input_shapes=input_shapes, attention="dims")
    blocks: dict[int, set[str]] = defaultdict(set)
    for name, atoms in heads.splits["heads"].items():
        gid = heads.group_of_class.get(int(heads.class_of[atoms[0]]))
        if gid is not None and not heads.groups[gid].frozen:
            blocks[gid].add(name)
    keep: set[str] = set()
    for names in blocks.values():
        for name in names:
            found = dims.splits["dims"].get(name)
            gid = None if found is None else dims.group_of_class.get(int(dims.class_of[found[0, 0]]))
            if gid is None or dims.groups[gid].frozen:
                keep |= names
                break
    return dims if not keep else Analysis(model, input_shapes=input_shapes, attention="dims", heads_at=frozenset(keep))


def analyze(model: onnx.ModelProto) -> Analysis:
    return Analysis(model)
