"""`onnxprune report`: a self-contained HTML page (plots embedded as PNG) from a report JSON."""
from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

from ..errors import UserError
from ..graph.load import check_regular_file


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def _loss_curves(groups, plt):
    curved = [g for g in groups if g.get("curve")]
    if not curved:
        return None
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for g in curved:
        curve = [max(v, 1e-12) for v in g["curve"]]
        line, = ax.plot(range(len(curve)), curve, lw=1, label=f"group {g['id']}")
        k = g["kept_count"]
        if k < len(curve):
            ax.plot([k], [curve[k]], "o", color=line.get_color(), ms=4)
    ax.set_yscale("log")
    ax.set_xlabel("kept channels")
    ax.set_ylabel("relative imitation loss")
    ax.set_title("Greedy loss versus kept channels (dot: chosen count)")
    if len(curved) <= 12:
        ax.legend(fontsize=7, ncol=2)
    return fig


def _layer_macs(layers, plt):
    layers = [lay for lay in layers if lay["macs_before"] > 0]
    if not layers:
        return None
    fig, ax = plt.subplots(figsize=(max(6, 0.25 * len(layers)), 4))
    x = range(len(layers))
    ax.bar(x, [lay["macs_before"] for lay in layers], color="#bbb", label="before")
    ax.bar(x, [lay["macs_after"] for lay in layers], color="#3a7", label="after")
    ax.set_xlabel("layer (graph order)")
    ax.set_ylabel("MACs per sample")
    ax.set_title("MACs per layer")
    ax.legend()
    return fig


def _latency_groups(latency, plt):
    """Latency per group: its cut's measured time against width (a latency target's table; dot: the kept
    width), or, for round_to=auto, the probe's times at full and at the chosen width."""
    groups = (latency or {}).get("groups") or {}
    if not groups:
        return None
    fig, ax = plt.subplots(figsize=(8, 4.5))
    if latency.get("kind") == "latency":
        for gid, g in groups.items():
            if not g.get("widths"):
                continue
            pts = sorted(zip(g["widths"], g["ms"]))
            line, = ax.plot([w for w, _ in pts], [t for _, t in pts], lw=1, label=f"group {gid}")
            ax.plot([g["width"]], [g["kept_ms"]], "o", color=line.get_color(), ms=4)
        ax.set_xlabel("kept channels")
        ax.set_ylabel("ms (the group's cut)")
        ax.set_title("Measured latency of each group's cut versus its width (dot: kept width)")
        if len(groups) <= 12:
            ax.legend(fontsize=7, ncol=2)
        return fig
    ids = list(groups)
    x = range(len(ids))
    ax.bar(x, [groups[i]["full_ms"] for i in ids], color="#bbb", label="full width")
    ax.bar(x, [groups[i]["ms"][str(groups[i]["width"])] for i in ids], color="#37a", label="chosen rounding")
    ax.set_xticks(list(x), ids, fontsize=7)
    ax.set_xlabel("group")
    ax.set_ylabel("ms (the group's cut)")
    ax.set_title("round-to auto: measured time of each group's cut")
    ax.legend()
    return fig


def _latency_text(latency) -> str:
    m = (latency or {}).get("measured")
    if not m:
        return ""
    what = "round-to auto, "
    if latency.get("kind") == "latency":
        predicted = latency["predicted_pruned_ms"] / latency["predicted_original_ms"]
        what = f"target {latency['target']:.3g} of the original's latency, predicted {predicted:.3f}, "
    return (f"<p>latency ({html.escape(str(latency.get('provider')))}, batch {latency.get('batch')}, "
            f"{html.escape(str(latency.get('timer')))} timer): {what}measured {m['original_ms']:.3f} ms &rarr; "
            f"{m['pruned_ms']:.3f} ms ({m['speedup']:.2f}x)</p>")
_INT, _NUM, _STR, _BOOL, _LIST, _DICT = "an integer", "a number", "a string", "true or false", "a list", "an object"
_TOP = {"model": _STR, "method": _STR, "target": _DICT, "macs_before": _INT, "macs_after": _INT,
        "params_before": _INT, "params_after": _INT, "groups": _LIST}
_TOP_OPTIONAL = {"layers": _LIST, "refit": _STR, "allocate": _STR, "calibration_samples": _INT, "macs_unknown": _LIST,
                 "latency": _DICT}
_GROUP = {"id": _INT, "channels": _INT, "kept_count": _INT, "frozen": _BOOL, "reasons": _LIST}
_GROUP_OPTIONAL = {"method": _STR, "err_calib": _NUM, "err_holdout": _NUM, "macs_share": _NUM, "note": _STR,
                   "curve": _LIST}
_LAYER = {"node": _STR, "op": _STR, "macs_before": _INT, "macs_after": _INT}


def _is(value, kind: str) -> bool:
    if kind == _BOOL:
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    return {_INT: lambda v: isinstance(v, int) and v >= 0,
            _NUM: lambda v: isinstance(v, (int, float)),
            _STR: lambda v: isinstance(v, str), _LIST: lambda v: isinstance(v, list),
            _DICT: lambda v: isinstance(v, dict)}[kind](value)


def _check_fields(obj, where: str, required: dict, optional: dict) -> None:
    if not isinstance(obj, dict):
        raise ValueError(f"{where} must be {_DICT}, not {type(obj).__name__}")
    for name in required:
        if name not in obj:
            raise ValueError(f"{where} has no field '{name}'")
    for name, kind in {**required, **optional}.items():
        if name in obj and not (obj[name] is None and name in optional) and not _is(obj[name], kind):
            shown = "a non-negative integer" if kind == _INT else kind
            raise ValueError(f"{where}.{name} must be {shown}, not {json.dumps(obj[name])[:40]}")


def check_report(data) -> None:
    """The fields the page shows, with their types (ValueError naming the first one that is wrong)."""
    _check_fields(data, "report", _TOP, _TOP_OPTIONAL)
    for i, g in enumerate(data["groups"]):
        _check_fields(g, f"groups[{i}]", _GROUP, _GROUP_OPTIONAL)
        if not all(isinstance(r, str) for r in g["reasons"]):
            raise ValueError(f"groups[{i}].reasons must be a list of strings")
        if not all(_is(v, _NUM) for v in g.get("curve") or []):
            raise ValueError(f"groups[{i}].curve must be a list of numbers")
    for i, lay in enumerate(data.get("layers") or []):
        _check_fields(lay, f"layers[{i}]", _LAYER, {})


def render(report_path: str | Path) -> str:
    """The HTML page of a report JSON. Every value from the file is escaped: node names and reasons come
    from the user's model, which may be hostile."""
    try:
        check_regular_file(report_path, "a report JSON file")
        data = json.loads(Path(report_path).read_text(encoding="utf-8"))
        check_report(data)
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise UserError(f"{report_path}: not an onnxprune report ({type(exc).__name__}: {exc})") from None
    groups, layers = data["groups"], data.get("layers") or []
    before, after = data["macs_before"], data["macs_after"]
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    latency = data.get("latency") or {}
    figs = [f for f in (_loss_curves(groups, plt), _layer_macs(layers, plt), _latency_groups(latency, plt))
            if f is not None]
    images = "".join(f'<img src="data:image/png;base64,{_png(f)}">' for f in figs)
    plt.close("all")

    def esc(value) -> str:
        return html.escape(str(value), quote=True)
    rows = "".join(
        f"<tr><td>{esc(g['id'])}</td><td>{esc(g['channels'])}</td><td>{esc(g['kept_count'])}</td>"
        f"<td>{esc(g.get('method') or '-')}</td>"
        f"<td>{_fmt(g.get('err_calib'))}</td><td>{_fmt(g.get('err_holdout'))}</td>"
        f"<td>{100 * (g.get('macs_share') or 0):.1f}%</td>"
        f"<td>{'frozen: ' + esc('; '.join(g['reasons'])) if g['frozen'] else esc(g.get('note') or '')}</td></tr>"
        for g in groups)
    unknown = data.get("macs_unknown") or []
    unknown_note = (f"<p>MACs not counted: {esc(len(unknown))} layers of unknown size (symbolic shapes): "
                    f"{esc(', '.join(map(str, unknown)))}</p>" if unknown else "")
    title = esc(f"onnxprune report: {data.get('model', '')}")
    params_before, params_after = data["params_before"], data["params_after"]
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1100px}}td,th{{padding:2px 8px;text-align:left}}
table{{border-collapse:collapse}}tr:nth-child(even){{background:#f4f4f4}}img{{max-width:100%;margin:1em 0}}</style>
</head><body><h1>{title}</h1>
<p>method <b>{esc(data.get('method'))}</b>, re-fit <b>{esc(data.get('refit'))}</b>,
allocation <b>{esc(data.get('allocate'))}</b>, target {esc(json.dumps(data.get('target')))},
calibration samples {esc(data.get('calibration_samples') or 0)}</p>
<p>MACs {before:,} &rarr; {after:,} ({after / max(before, 1):.1%}); parameters {params_before:,} &rarr;
{params_after:,} ({params_after / max(params_before, 1):.1%})</p>{unknown_note}
{_latency_text(latency)}
{images}
<h2>Groups</h2><table><tr><th>id</th><th>channels</th><th>kept</th><th>method</th><th>error (calib)</th>
<th>error (held out)</th><th>MACs share</th><th>notes</th></tr>{rows}</table></body></html>"""


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.4f}"
