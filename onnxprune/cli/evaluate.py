"""`onnxprune eval ORIGINAL PRUNED --data D.npz`: how closely the pruned model imitates the original."""
from __future__ import annotations

import json

import click

from ..options import EvalOptions
from .common import user_errors
from .options import options_from


@click.command("eval")
@click.argument("original", type=click.Path(dir_okay=True))
@click.argument("pruned", type=click.Path(dir_okay=True))
@click.option("--data", required=True, type=click.Path(), help=".npz: input name -> array, optional 'labels'.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@options_from(EvalOptions)
@user_errors
def command(original, pruned, data, as_json, batch_size):
    """Top-1 agreement, mean KL and accuracies of PRUNED against ORIGINAL on --data."""
    from ..report.evaluate import compare
    res = compare(original, pruned, data, batch_size)
    if as_json:
        click.echo(json.dumps(res, indent=2))
        return
    click.echo(f"samples    {res['samples']}")
    click.echo(f"agreement  {res['agreement']:.2%}")
    click.echo(f"mean KL    {res['kl']:.4f}")
    if res["accuracy_original"] is not None:
        click.echo(f"accuracy   {res['accuracy_original']:.2%} -> {res['accuracy_pruned']:.2%}")
