"""`onnxprune prune MODEL -o OUT`: prune to a target and write the smaller model (and, on request, the
report and the masked reference)."""
from __future__ import annotations

import os
import re

import click

from .. import api
from ..errors import UserError
from ..graph import atomic_write_bytes, check_output_path, path_uses_external_data, save_model
from ..graph.save import check_collisions, external_data_files
from ..options import (
    TARGETS,
    CalibrationOptions,
    DistillOptions,
    GlobalOptions,
    ModelOptions,
    OptionError,
    RefitOptions,
    SelectionOptions,
    TargetOptions,
)
from ..selection.methods import method_names
from .common import INPUT_SHAPE_HELP, input_shapes, user_errors, write_all
from .options import options_from, values_of


def _size(path) -> float:
    """MB of the model file and the external data files it refers to (whatever their names)."""
    return (os.path.getsize(path) + sum(os.path.getsize(f) for f in external_data_files(path) if f.is_file())) / 1e6


def _parse_keep(values) -> dict[int, int]:
    out = {}
    for v in values:
        gid, _, n = v.partition("=")
        if not re.fullmatch(r"\s*[0-9]+\s*", gid) or not re.fullmatch(r"\s*[0-9]+\s*", n):
            raise OptionError("keep", v, "expected GROUP=N with integers")
        out[int(gid)] = int(n)
    return out


@click.command("prune")
@click.argument("model", type=click.Path(dir_okay=True))
@click.option("-o", "--output", required=True, type=click.Path(), help="Pruned model path.")
@click.option("--calib", type=click.Path(), help="Calibration data: .npz/.npy file or folder, or image folder.")
@options_from(TargetOptions)
@click.option("--keep", "keep", multiple=True, metavar="GROUP=N", help="Per-group kept count (repeatable).")
@options_from(SelectionOptions, choices={"method": method_names()})
@options_from(RefitOptions)
@options_from(CalibrationOptions)
@options_from(GlobalOptions)
@options_from(DistillOptions)
@options_from(ModelOptions)
@click.option("--report", "report_path", type=click.Path(), help="Write the report JSON here.")
@click.option("--masked-reference", "masked_path", type=click.Path(),
              help="Also write the masked reference (original topology, removed channels zeroed).")
@click.option("--input-shape", "input_shape", multiple=True, metavar="NAME=D0,D1,...", help=INPUT_SHAPE_HELP)
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
@user_errors
def command(model, output, calib, keep, report_path, masked_path, input_shape, quiet, **values):
    """Prune MODEL to a target and write the smaller model to OUTPUT."""
    for path in (output, report_path, masked_path):
        if path:
            check_output_path(path, model)
    check_collisions({"output": output, "masked reference": masked_path, "report": report_path},
                     {"input model": model, "calibration data": calib}, models={"input model"},
                     model_outputs={"output", "masked reference"})
    if all(values[t] is None for t in TARGETS):
        raise UserError("give a target: --keep-ratio R, --flops F, --params P or --latency L")
    flat = {}
    for group in (TargetOptions, SelectionOptions, RefitOptions, CalibrationOptions, GlobalOptions, DistillOptions,
                  ModelOptions):
        flat.update(values_of(group, values))
    pruned, report = api.prune(model, calib, keep=_parse_keep(keep), input_shapes=input_shapes(input_shape),
                               quiet=quiet, **flat)
    external = path_uses_external_data(model) or None  # weights beside the input: same for the output
    writes = [(output, lambda p: save_model(pruned, p, external_data=external))]
    if masked_path:
        masked = api.masked_reference(report)
        writes.append((masked_path, lambda p: save_model(masked, p, external_data=external)))
    if report_path:
        text = report.to_json().encode()
        writes.append((report_path, lambda p: atomic_write_bytes(p, text)))
    write_all(writes)
    click.echo(report.summary())
    click.echo(f"size   {_size(model):.2f} MB -> {_size(output):.2f} MB")
    click.echo(f"wrote {output}")
