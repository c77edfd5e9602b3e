"""`onnxprune report R.json -o R.html`: a self-contained HTML page from a report JSON."""
from __future__ import annotations

import click

from ..graph import atomic_write_bytes, check_output_path
from ..graph.save import check_collisions
from .common import user_errors


@click.command("report")
@click.argument("report_json", type=click.Path())
@click.option("-o", "--output", required=True, type=click.Path(), help="HTML file to write.")
@user_errors
def command(report_json, output):
    """Render REPORT_JSON (from `prune --report`) as a self-contained HTML page with plots."""
    from ..report.html import render
    check_output_path(output, report_json)
    check_collisions({"page": output}, {"report": report_json})
    atomic_write_bytes(output, render(report_json).encode())
    click.echo(f"wrote {output}")
