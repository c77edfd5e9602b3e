"""`onnxprune analyze MODEL`: the channel groups, what may shrink together, and what is frozen and why."""
from __future__ import annotations

import json

import click

from .. import api
from ..options import ModelOptions
from .common import INPUT_SHAPE_HELP, input_shapes, user_errors
from .options import options_from


def _names(names, limit=3):
    return ", ".join(names[:limit]) + (f" +{len(names) - limit}" if len(names) > limit else "") or "-"


@click.command("analyze")
@click.argument("model", type=click.Path(dir_okay=True))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--input-shape", "input_shape", multiple=True, metavar="NAME=D0,D1,...", help=INPUT_SHAPE_HELP)
@options_from(ModelOptions)
@user_errors
def command(model, as_json, input_shape, attention):
    """Show the channel groups of MODEL: what may shrink together, and what is frozen and why."""
    a = api.analyze(model, input_shapes=input_shapes(input_shape), attention=attention)
    total = max(a.total_macs, 1)
    groups = [{"id": g.id, "channels": g.channels, "frozen": g.frozen, "reason": "; ".join(g.reasons),
               "producers": g.producers, "consumers": g.consumers, "macs_share": g.macs / total,
               "kind": g.kind, "unit": g.unit}
              for g in a.groups]
    unknown = [{"node": c.node, "op": c.op} for c in a.unknown_costs]
    if as_json:
        click.echo(json.dumps({"macs": a.total_macs, "params": a.total_params(), "unknown_macs": unknown,
                               "groups": groups}, indent=2))
        return
    click.echo(f"{model}: {a.total_macs:,} MACs per sample{' (known layers)' if unknown else ''}, "
               f"{a.total_params():,} parameters, {len(a.prunable)} of {len(a.groups)} groups prunable")
    if unknown:
        hint = ": --input-shape NAME=D0,D1,..." if a.input_shapes_would_help() else ""
        click.echo(f"{a.unknown_cost_reason()}{hint}")
        click.echo("layers of unknown MACs: " + ", ".join(f"{c['op']} '{c['node']}'" for c in unknown))
    click.echo(f"{'id':>4} {'ch':>5} {'MACs%':>6}  {'status':<8} producers -> consumers")
    for g in groups:
        status = "frozen" if g["frozen"] else "prunable"
        if g["kind"] == "heads":  # docs/DESIGN.md, "Attention heads": each channel is a head
            status += f" heads of {g['unit']}"
        elif g["kind"] in ("qk_dims", "v_dims"):  # "Dims within heads": each channel is one dim of every head
            status += f" {'Q·K' if g['kind'] == 'qk_dims' else 'V'} dims of {g['unit']} heads"
        click.echo(f"{g['id']:>4} {g['channels']:>5} {100 * g['macs_share']:>5.1f}%  {status:<8} "
                   f"{_names(g['producers'])} -> {_names(g['consumers'])}")
        if g["frozen"]:
            click.echo(f"{'':>27}why: {g['reason']}")
