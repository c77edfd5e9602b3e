"""`onnxprune analyze MODEL`: the channel groups, what may shrink together, and what is frozen and why."""
from __future__ import annotations

import json

import click

from .. import api
from .common import user_errors


def _names(names, limit=3):
    return ", ".join(names[:limit]) + (f" +{len(names) - limit}" if len(names) > limit else "") or "-"


@click.command("analyze")
@click.argument("model", type=click.Path(dir_okay=True))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@user_errors
def command(model, as_json):
    """Show the channel groups of MODEL: what may shrink together, and what is frozen and why."""
    a = api.analyze(model)
    total = max(a.total_macs, 1)
    groups = [{"id": g.id, "channels": g.channels, "frozen": g.frozen, "reason": "; ".join(g.reasons),
               "producers": g.producers, "consumers": g.consumers, "macs_share": g.macs / total,
               "kind": g.kind, "unit": g.unit}
              for g in a.groups]
    if as_json:
        click.echo(json.dumps({"macs": a.total_macs, "params": a.total_params(), "groups": groups}, indent=2))
        return
    click.echo(f"{model}: {a.total_macs:,} MACs per sample, {a.total_params():,} parameters, "
               f"{len(a.prunable)} of {len(a.groups)} groups prunable")
    click.echo(f"{'id':>4} {'ch':>5} {'MACs%':>6}  {'status':<8} producers -> consumers")
    for g in groups:
        status = "frozen" if g["frozen"] else "prunable"
        if g["kind"] == "heads":  # docs/DESIGN.md, "Attention heads": each channel is a head
            status += f" heads of {g['unit']}"
        click.echo(f"{g['id']:>4} {g['channels']:>5} {100 * g['macs_share']:>5.1f}%  {status:<8} "
                   f"{_names(g['producers'])} -> {_names(g['consumers'])}")
        if g["frozen"]:
            click.echo(f"{'':>27}why: {g['reason']}")
