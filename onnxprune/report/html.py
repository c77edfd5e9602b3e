"""`onnxprune report`: a self-contained HTML page (plots embedded as PNG) from a report JSON."""
from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

from ..errors import UserError


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


def render(report_path: str | Path) -> str:
    try:
        data = json.loads(Path(report_path).read_text())
        groups, layers = data["groups"], data.get("layers", [])
        before, after = data["macs_before"], data["macs_after"]
    except FileNotFoundError:
        raise UserError(f"{report_path}: no such report file") from None
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise UserError(f"{report_path}: not an onnxprune report ({type(exc).__name__}: {exc})") from None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    latency = data.get("latency") or {}
    figs = [f for f in (_loss_curves(groups, plt), _layer_macs(layers, plt), _latency_groups(latency, plt))
            if f is not None]
    images = "".join(f'<img src="data:image/png;base64,{_png(f)}">' for f in figs)
    plt.close("all")
    esc = html.escape
    rows = "".join(
        f"<tr><td>{g['id']}</td><td>{g['channels']}</td><td>{g['kept_count']}</td>"
        f"<td>{esc(str(g.get('method') or '-'))}</td>"
        f"<td>{_fmt(g.get('err_calib'))}</td><td>{_fmt(g.get('err_holdout'))}</td>"
        f"<td>{100 * g.get('macs_share', 0):.1f}%</td>"
        f"<td>{'frozen: ' + esc('; '.join(g['reasons'])) if g['frozen'] else esc(g.get('note', ''))}</td></tr>"
        for g in groups)
    title = esc(f"onnxprune report: {data.get('model', '')}")
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1100px}}td,th{{padding:2px 8px;text-align:left}}
table{{border-collapse:collapse}}tr:nth-child(even){{background:#f4f4f4}}img{{max-width:100%;margin:1em 0}}</style>
</head><body><h1>{title}</h1>
<p>method <b>{esc(str(data.get('method')))}</b>, re-fit <b>{esc(str(data.get('refit')))}</b>,
allocation <b>{esc(str(data.get('allocate')))}</b>, target {esc(json.dumps(data.get('target')))},
calibration samples {data.get('calibration_samples', 0)}</p>
<p>MACs {before:,} &rarr; {after:,} ({after / max(before, 1):.1%}); parameters {data['params_before']:,} &rarr;
{data['params_after']:,} ({data['params_after'] / max(data['params_before'], 1):.1%})</p>
{_latency_text(latency)}
{images}
<h2>Groups</h2><table><tr><th>id</th><th>channels</th><th>kept</th><th>method</th><th>error (calib)</th>
<th>error (held out)</th><th>MACs share</th><th>notes</th></tr>{rows}</table></body></html>"""


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.4f}"
