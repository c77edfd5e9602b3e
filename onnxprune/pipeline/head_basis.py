"""The dims of every head re-based on the calibration data's leading directions (docs/DESIGN.md, "Dims within
heads"): the Q·K dims, and the V dims with the output projection.

With `--attention dims` a Q·K dims group is channel d of every head of Q and K, and its only reader is the
product Q·Kᵀ, which has no weight to re-fit. What a head computes is the bilinear form
x_iᵀ Ŵ_Q Ŵ_Kᵀ x_j (Ŵ: weight and bias, x: a token's input with a 1 appended), and any invertible D×D matrix
A with Ŵ_Q → Ŵ_Q A, Ŵ_K → Ŵ_K A⁻ᵀ leaves it unchanged. Chosen from the inputs' second moments C_Q, C_K on
the calibration tokens (padding left out), A puts the head's dims in the order of the singular values s_d
of the whitened form L_Qᵀ Ŵ_Q Ŵ_Kᵀ L_K (C = L Lᵀ): keeping the first D' dims is then the best rank-D'
approximation of the head's scores in that metric, and the score error of dropping dim d is s_d². So the
model is first re-based (an exact change: checked in ONNX Runtime), and the group keeps the dims of largest
Σ_h s_hd² (dim d of every head at once), with no re-fit.

Per head, with R_Q the square root of Ŵ_Qᵀ C_Q Ŵ_Q (RᵀR = that D×D matrix) and R_K likewise: the SVD
R_Q R_Kᵀ = U S Vᵀ gives A = R_Q⁻¹ U S^½ for Q and B = R_K⁻¹ V S^½ for K, and A Bᵀ = I.

A V dims group has a consumer to re-fit (the output projection), so greedy selection works on it as it is;
re-basing it first (`_rebase_values`) gives the selection uncorrelated dims ordered by what they give the
output, the head's best rank-D' directions, where raw dims are an arbitrary basis.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper
from tqdm import tqdm

from ..analysis import Analysis
from ..calibration import Calibration, checked_batches
from ..calibration.taps import Tap

log = logging.getLogger("onnxprune")

RELATIVE_FLOOR = 1e-6    # added to the D×D moments' eigenvalues (times the largest) so R stays invertible
EXACT_TOLERANCE = 1e-3   # largest output change of the re-based model (relative to the output's scale)


@dataclass
class Side:
    """One operand of Q·Kᵀ: its projection (a MatMul with a constant 2-D weight, optionally followed by a bias
    Add) and, per head, the projection's output columns of dims 0..D-1."""
    matmul: int                 # node index of the projection MatMul
    weight: str                 # its weight initializer
    bias: tuple[int, str] | None  # (Add node index, bias initializer) or None
    input: str                  # the tensor the projection reads
    columns: np.ndarray         # [H, D] output column of head h, dim d


@dataclass
class Pair:
    """A Q·K dims group's product: its two sides and the group's channel of each dim."""
    group: int
    q: Side
    k: Side
    channel_of_dim: np.ndarray  # [D] index into the group's channels


def pairs(analysis: Analysis) -> tuple[list[Pair], dict[int, str]]:
    """The prunable Q·K dims groups whose two sides are plain projections, and for the others why not."""
    out: list[Pair] = []
    skipped: dict[int, str] = {}
    roots = analysis.class_of
    for _, left, right in analysis.contractions:
        gid = analysis.group_of_class.get(int(roots[left[0]]))
        if gid is None or analysis.groups[gid].frozen:
            continue
        if gid in skipped or any(p.group == gid for p in out):
            skipped[gid] = "the Q·K dims are summed over by more than one product"
            out = [p for p in out if p.group != gid]
            continue
        if set(analysis.groups[gid].classes.tolist()) != {int(c) for c in roots[left]}:
            skipped[gid] = "the group holds channels besides the Q·K dims"
            continue
        sides = [_side(analysis, lab) for lab in (left, right)]
        if any(isinstance(s, str) for s in sides):
            skipped[gid] = next(s for s in sides if isinstance(s, str))
            continue
        q, k = sides
        assert isinstance(q, Side) and isinstance(k, Side)
        position = {c: i for i, c in enumerate(analysis.groups[gid].classes.tolist())}
        out.append(Pair(gid, q, k, np.array([position[int(roots[a])] for a in left], dtype=np.int64)))
    return out, skipped


@dataclass
class ValuePath:
    """A V dims group: its projection and the output projection reading it (rows of head h, dim d)."""
    group: int
    v: Side
    weight: str                 # the output projection's weight initializer
    input: str                  # the tensor the output projection reads
    rows: np.ndarray            # [H, D]


def value_paths(analysis: Analysis) -> tuple[list[ValuePath], dict[int, str]]:
    """The prunable V dims groups whose projection and output projection are plain MatMuls, and for the
    others why not."""
    out, skipped = [], {}
    roots = analysis.class_of
    nodes = analysis.graph.nodes
    init = {t.name for t in analysis.model.graph.initializer}
    for grid in analysis.head_dims:
        gid = analysis.group_of_class.get(int(roots[grid[0, 0]]))
        if gid is None or analysis.groups[gid].frozen or analysis.groups[gid].kind != "v_dims":
            continue
        side = _side(analysis, grid[0])
        if isinstance(side, str):
            skipped[gid] = side
            continue
        classes = set(analysis.groups[gid].classes.tolist())
        readers = [e for e in analysis.edits if e.kind in ("consumer", "grouped_consumer")
                   and classes & set(roots[e.labels].tolist())]
        if len(readers) != 1 or readers[0].kind != "consumer" or nodes[readers[0].node].op != "MatMul" \
                or readers[0].axis != 0:
            skipped[gid] = "the V dims are not read by one MatMul output projection"
            continue
        e = readers[0]
        w = nodes[e.node].inputs[1]
        labels = roots[e.labels]
        heads = grid.shape[0]
        rows = [np.flatnonzero(labels == roots[a]) for a in grid[0]]
        if w.name not in init or len(w.outputs) != 1 or any(len(r) != heads for r in rows) or \
                len(labels) != grid.size:
            skipped[gid] = "the output projection reads more than the heads' dims, or shares its weight"
            continue
        # the i-th row of dim d belongs to head i: the merge keeps the heads in order
        out.append(ValuePath(gid, side, w.name, nodes[e.node].inputs[0].name, np.stack(rows, axis=1)))
    return out, skipped


def _side(analysis: Analysis, labels: np.ndarray) -> Side | str:
    grid = next((g for g in analysis.head_dims if np.array_equal(g[0], labels)), None)
    if grid is None:
        return "the operand is not a projection split into heads"
    atoms = set(grid.ravel().tolist())
    prods = [e for e in analysis.edits if e.kind == "producer" and atoms & set(e.labels.tolist())]
    params = [e for e in analysis.edits if e.kind == "param" and atoms & set(e.labels.tolist())]
    nodes = analysis.graph.nodes
    if len(prods) != 1 or nodes[prods[0].node].op != "MatMul" or prods[0].axis != 1 or len(params) > 1:
        return "the operand does not come from one MatMul projection (and at most one bias Add)"
    p = prods[0]
    col = {a: i for i, a in enumerate(p.labels.tolist())}
    if not atoms <= set(col):
        return "the projection's heads are not all its own columns"
    init = {t.name for t in analysis.model.graph.initializer}
    mm = nodes[p.node]
    weight = mm.inputs[1].name
    if weight not in init or len(mm.inputs[1].outputs) != 1:
        return f"weight '{weight}' is not an initializer of its own"
    bias = None
    if params:
        e = params[0]
        t = nodes[e.node].inputs[e.input]
        if nodes[e.node].op != "Add" or t.name not in init or len(t.outputs) != 1 or \
                not np.array_equal(np.asarray(e.labels), p.labels):
            return "the projection's bias is not an Add of an initializer of its own"
        bias = (e.node, t.name)
    columns = np.vectorize(col.__getitem__)(grid)
    return Side(p.node, weight, bias, mm.inputs[0].name, columns)


def input_moments(analysis: Analysis, cal: Calibration, names: list[str], batch_size: int,
                  token_mask: str | None, quiet: bool = True) -> dict[str, np.ndarray]:
    """E[[x, 1][x, 1]ᵀ] of each named tensor's rows (its last axis the features) on the calibration split, the
    padding tokens (zeros of input `token_mask`) left out."""
    tap = Tap(analysis.model, names)
    sums: dict[str, np.ndarray] = {}
    rows = dict.fromkeys(names, 0)
    bar = tqdm(total=cal.size, desc="head bases", unit="sample", leave=False, disable=quiet or None)
    for _, batch in checked_batches(cal, batch_size, "calib", tap.joins):
        xs = tap(batch)
        tokens = batch.get(token_mask) if token_mask else None
        for name in names:
            x = np.asarray(xs[name], dtype=np.float64)
            if tokens is not None and x.ndim == 3 and x.shape[:2] == tokens.shape:
                x = x[np.asarray(tokens) != 0]
            x = x.reshape(-1, x.shape[-1])
            x1 = np.concatenate([x, np.ones((len(x), 1))], axis=1)
            sums[name] = sums.get(name, 0.0) + x1.T @ x1
            rows[name] += len(x)
        bar.update(len(next(iter(batch.values()))))
    bar.close()
    return {n: sums[n] / max(rows[n], 1) for n in names}


def _root(gram: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(R, R⁻¹) with RᵀR = gram + floor·I (an invertible square root)."""
    lam, vec = np.linalg.eigh((gram + gram.T) / 2)
    lam = np.maximum(lam, 0.0) + RELATIVE_FLOOR * max(float(lam.max()), 1e-300)
    return np.sqrt(lam)[:, None] * vec.T, vec / np.sqrt(lam)[None, :]


def head_bases(wq: np.ndarray, wk: np.ndarray, cq: np.ndarray, ck: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For one head's Ŵ_Q, Ŵ_K ([C+1, D], bias last) and input moments: (A, B, s) with A Bᵀ = I and s the
    singular values of the whitened Q·K form, descending (see the module docstring)."""
    d = wq.shape[1]
    gq, gk = wq.T @ cq @ wq, wk.T @ ck @ wk
    if not (np.abs(gq).max() > 0 and np.abs(gk).max() > 0):   # no data reached the head: left as it is
        return np.eye(d), np.eye(d), np.zeros(d)
    rq, rq_inv = _root(gq)
    rk, rk_inv = _root(gk)
    u, s, vt = np.linalg.svd(rq @ rk.T)
    half = np.sqrt(s)
    return rq_inv @ u * half, rk_inv @ vt.T * half, s


@dataclass
class Rebased:
    """What `rebase` did."""
    model: onnx.ModelProto | None      # the re-based model (None: nothing to re-base)
    scores: dict[int, np.ndarray]      # Q·K dims group -> its channels' scores (Σ over heads of s_hd²)
    skipped: dict[int, str]            # Q·K dims group not re-based -> why
    values: int                        # V dims groups re-based
    change: float | None = None        # the outputs' largest change on a calibration batch (relative)


def rebase(analysis: Analysis, cal: Calibration, batch_size: int, token_mask: str | None, quiet: bool = True
           ) -> Rebased:
    """Every re-basable Q·K dims and V dims group re-based, and how much that changes the model's outputs in
    ONNX Runtime on a calibration batch (the caller decides whether it is exact enough: EXACT_TOLERANCE)."""
    found, skipped = pairs(analysis)
    values, skipped_v = value_paths(analysis)
    if not found and not values:
        return Rebased(None, {}, skipped, 0)
    names = list(dict.fromkeys([n for p in found for n in (p.q.input, p.k.input)] + [v.input for v in values]))
    moments = input_moments(analysis, cal, names, batch_size, token_mask, quiet)
    model = onnx.ModelProto()
    model.CopyFrom(analysis.model)
    inits = {t.name: t for t in model.graph.initializer}
    for v in values:
        _rebase_values(inits, v, moments[v.input][:-1, :-1])
    for gid, why in skipped_v.items():
        log.info("group %d (V dims) is not re-based: %s", gid, why)
    scores: dict[int, np.ndarray] = {}
    for p in found:
        wq = _stacked(inits, p.q)
        wk = wq if _same_weights(p.q, p.k) else _stacked(inits, p.k)  # one fused projection: one array
        group_scores = np.zeros(analysis.groups[p.group].channels)
        for h in range(p.q.columns.shape[0]):
            cols_q, cols_k = p.q.columns[h], p.k.columns[h]
            a, b, s = head_bases(wq[:, cols_q], wk[:, cols_k], moments[p.q.input], moments[p.k.input])
            wq[:, cols_q] = wq[:, cols_q] @ a
            wk[:, cols_k] = wk[:, cols_k] @ b
            np.add.at(group_scores, p.channel_of_dim, s ** 2)
        _store(inits, p.q, wq)
        if wk is not wq:
            _store(inits, p.k, wk)
        scores[p.group] = group_scores
    return Rebased(model, scores, skipped, len(values), output_change(analysis.model, model, cal, batch_size))


def output_change(before: onnx.ModelProto, after: onnx.ModelProto, cal: Calibration, batch_size: int) -> float:
    """The largest change of any output from `before` to `after` on one calibration batch, relative to the
    output's scale (NaN when an output is not finite)."""
    _, batch = next(cal.batches(cal.run_batch(min(8, batch_size)), "calib"))
    names = [o.name for o in before.graph.output]
    want, got = Tap(before, names)(batch), Tap(after, names)(batch)
    return max(float(np.abs(got[n] - want[n]).max() / max(float(np.abs(want[n]).max()), 1e-6)) for n in names)


def _rebase_values(inits: dict, path: ValuePath, moments: np.ndarray) -> None:
    """Per head, V → V T and the output projection's rows → T⁻¹ rows, with T = R⁻¹ U from the head's context
    moments (RᵀR) and the SVD R·W_O,h = U S Wᵀ: the context's dims become uncorrelated and ordered by what
    they give the output (an exact change; docs/DESIGN.md, "Dims within heads")."""
    wv = _stacked(inits, path.v)
    wo = numpy_helper.to_array(inits[path.weight]).astype(np.float64)
    for h in range(path.rows.shape[0]):
        cols, rows = path.v.columns[h], path.rows[h]
        block = moments[np.ix_(rows, rows)]
        if not np.abs(block).max() > 0:   # no data reached the head: left as it is
            continue
        r, r_inv = _root(block)
        u, _, _ = np.linalg.svd(r @ wo[rows])
        wv[:, cols] = wv[:, cols] @ (r_inv @ u)
        wo[rows] = u.T @ r @ wo[rows]
    _store(inits, path.v, wv)
    old = numpy_helper.to_array(inits[path.weight])
    inits[path.weight].CopyFrom(numpy_helper.from_array(wo.astype(old.dtype), path.weight))


def _same_weights(a: Side, b: Side) -> bool:
    """Both sides are column blocks of one (fused) projection: one MatMul node (`_side` admits only weights
    read by one node), so one bias Add too."""
    return a.matmul == b.matmul


def _stacked(inits: dict, side: Side) -> np.ndarray:
    """[weight; bias] in float64 ([C+1, N]; a zero bias row when there is none)."""
    w = numpy_helper.to_array(inits[side.weight]).astype(np.float64)
    b = numpy_helper.to_array(inits[side.bias[1]]).astype(np.float64).reshape(1, -1) if side.bias else \
        np.zeros((1, w.shape[1]))
    return np.concatenate([w, np.broadcast_to(b, (1, w.shape[1]))], axis=0)


def _store(inits: dict, side: Side, stacked: np.ndarray) -> None:
    old = numpy_helper.to_array(inits[side.weight])
    inits[side.weight].CopyFrom(numpy_helper.from_array(stacked[:-1].astype(old.dtype), side.weight))
    if side.bias:
        name = side.bias[1]
        old_b = numpy_helper.to_array(inits[name])
        inits[name].CopyFrom(numpy_helper.from_array(stacked[-1].reshape(old_b.shape).astype(old_b.dtype), name))
