"""`onnxprune bench MODEL [MODEL ...]`: latency and throughput of models side by side on an ONNX Runtime
execution provider, timed in interleaved rounds after a warm-up, with the ratio to the first model
(docs/DESIGN.md, "Latency")."""
from __future__ import annotations

import json

import click

from ..options import OptionError, Provider
from .common import user_errors


def _batches(text: str) -> list[int]:
    try:
        out = [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        out = []
    if not out or any(b < 1 for b in out):
        raise OptionError("batch", text, "expected batch sizes >= 1, separated by commas (e.g. 1,32)")
    return out


@click.command("bench")
@click.argument("models", nargs=-1, required=True, type=click.Path(dir_okay=True))
@click.option("--batch", "batch", default="1", show_default=True, help="Batch sizes, comma-separated (e.g. 1,32).")
@click.option("--provider", type=click.Choice([p.value for p in Provider]), default="cpu", show_default=True,
              help="ONNX Runtime execution provider.")
@click.option("--threads", type=int, default=None, help="Intra-op threads (default: the cores this process may use).")
@click.option("--fp16", is_flag=True, help="fp16 (cuda: the models converted; tensorrt: fp16 kernels allowed).")
@click.option("--data", type=click.Path(), help=".npz whose first rows are the inputs (default: random inputs of "
              "the models' declared shapes).")
@click.option("--rounds", type=int, default=None, help="Timed rounds (default: about 2 s per model, 5 to 50).")
@click.option("--warmup", type=int, default=3, show_default=True, help="Untimed rounds first.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@user_errors
def command(models, batch, provider, threads, fp16, data, rounds, warmup, as_json):
    """Latency of MODELS side by side; the ratio is the first model's time over each one's."""
    from ..calibration.datafile import load_npz
    from ..graph import load_model
    from ..latency import Runtime, default_timer
    from ..latency.speed import compare
    batches = _batches(batch)
    if threads is not None and threads < 1:
        raise OptionError("threads", threads, "must be an integer >= 1")
    if rounds is not None and rounds < 1:
        raise OptionError("rounds", rounds, "must be an integer >= 1")
    if warmup < 0:
        raise OptionError("warmup", warmup, "must be an integer >= 0")
    runtime = Runtime(Provider.parse("provider", provider), threads, fp16)
    runtime.check()
    loaded = {}
    for i, path in enumerate(models):
        name = path if path not in loaded else f"{path} [{i + 1}]"
        loaded[name] = load_model(path)
    example = None
    if data:
        first = next(iter(loaded.values()))
        example, _ = load_npz(data, first)
        from ..calibration.datafile import check_inputs
        for name, m in loaded.items():
            check_inputs(example, m, f"{data} (for {name})")
    timer = default_timer(runtime)
    rows = []
    for b in batches:
        rows += compare(timer, loaded, b, example, rounds, warmup)
    if as_json:
        click.echo(json.dumps({"runtime": timer.describe(), "rows": rows}, indent=2))
        return
    d = timer.describe()
    click.echo(f"{d['timer']} on {d['provider']}, {d['threads']} threads{', fp16' if fp16 else ''}"
               + (f"; {d['cpu']}" if "cpu" in d else ""))
    head = ["model", "batch", "median ms", "p10-p90 ms", "per s", "vs first"]
    cells = [head] + [[r["model"], str(r["batch"]), f"{r['median_ms']:.3f}", f"{r['p10_ms']:.3f}-{r['p90_ms']:.3f}",
                       f"{r['throughput_per_s']:.1f}", f"{r['ratio_to_first']:.2f}x"] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(head))]
    for j, c in enumerate(cells):
        click.echo("  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(c, widths))))
        if j == 0:
            click.echo("  ".join("-" * w for w in widths))
    loads = [r["loadavg_before"] for r in rows if r["loadavg_before"]]
    if loads:
        click.echo(f"load average before/after: {rows[0]['loadavg_before'][0]:.2f} / {rows[-1]['loadavg_after'][0]:.2f}"
                   f"; {rows[0]['n']} rounds per model")
