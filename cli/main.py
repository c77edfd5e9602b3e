"""The `onnxprune` command: analyze, prune, eval. User errors print one line and exit with code 2."""
from __future__ import annotations

import functools
import json
import logging
import sys

import click

from onnxprune import api
from onnxprune.errors import UserError
from onnxprune.modelio import atomic_write_bytes, check_output_path, path_uses_external_data, save_model


def _one_line(text: str) -> str:
    return " ".join(text.split())


def user_errors(fn):
    """Turn UserError (and unwritable paths) into one line on stderr and exit code 2."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            click.echo(f"onnxprune: error: {_one_line(str(exc))}", err=True)
            sys.exit(2)
        except OSError as exc:  # unwritable, missing, too long... paths
            click.echo(f"onnxprune: error: {exc.filename or ''}: {_one_line(exc.strerror or str(exc))}", err=True)
            sys.exit(2)
    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="onnxprune")
@click.option("-q", "--quiet", is_flag=True, help="Only errors.")
def main(quiet):
    """Structured channel pruning of ONNX models."""
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(message)s")


@main.command()
@click.argument("model", type=click.Path(dir_okay=True))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@user_errors
def analyze(model, as_json):
    """Show the channel groups of MODEL: what may shrink together, and what is frozen and why."""
    a = api.analyze(model)
    total = max(a.total_macs, 1)
    groups = [{"id": g.id, "channels": g.channels, "frozen": g.frozen, "reason": "; ".join(g.reasons),
               "producers": g.producers, "consumers": g.consumers, "macs_share": g.macs / total}
              for g in a.groups]
    if as_json:
        click.echo(json.dumps({"macs": a.total_macs, "params": a.total_params(), "groups": groups}, indent=2))
        return
    click.echo(f"{model}: {a.total_macs:,} MACs per sample, {a.total_params():,} parameters, "
               f"{len(a.prunable)} of {len(a.groups)} groups prunable")
    click.echo(f"{'id':>4} {'ch':>5} {'MACs%':>6}  {'status':<8} producers -> consumers")
    for g in groups:
        status = "frozen" if g["frozen"] else "prunable"
        click.echo(f"{g['id']:>4} {g['channels']:>5} {100 * g['macs_share']:>5.1f}%  {status:<8} "
                   f"{_names(g['producers'])} -> {_names(g['consumers'])}")
        if g["frozen"]:
            click.echo(f"{'':>27}why: {g['reason']}")


def _names(names, limit=3):
    return ", ".join(names[:limit]) + (f" +{len(names) - limit}" if len(names) > limit else "") or "-"


def _write_all(writes) -> None:
    """Write every output or none: outputs already written are removed if a later one fails."""
    import os
    done = []
    try:
        for path, write in writes:
            existed = os.path.exists(path)
            write(path)
            if not existed:
                done.append(path)
    except BaseException:
        for path in done:
            for p in (path, str(path) + ".data"):
                if os.path.exists(p):
                    os.unlink(p)
        raise


def _size(path) -> float:
    import os
    total = os.path.getsize(path)
    data = str(path) + ".data"
    return (total + (os.path.getsize(data) if path_uses_external_data(path) and os.path.exists(data) else 0)) / 1e6


def _parse_keep(values):
    out = {}
    for v in values:
        gid, _, n = v.partition("=")
        if not gid.strip().isdigit() or not n.strip().isdigit():
            raise UserError(f"--keep {v}: expected GROUP=N with integers")
        out[int(gid)] = int(n)
    return out


@main.command()
@click.argument("model", type=click.Path(dir_okay=True))
@click.option("-o", "--output", required=True, type=click.Path(), help="Pruned model path.")
@click.option("--method", default="greedy-local", show_default=True, type=click.Choice(api.METHODS),
              help="How channels are chosen.")
@click.option("--calib", type=click.Path(), help="Calibration data: .npz/.npy file or folder, or image folder.")
@click.option("--refit", type=click.Choice(["none", "gamma", "full"]),
              help="Re-fit after selection  [default: full with --calib, none without]")
@click.option("--keep-ratio", type=float, help="Keep this fraction of the channels of every group.")
@click.option("--flops", type=float, help="Keep this fraction of the original MACs (within 2%).")
@click.option("--params", type=float, help="Keep this fraction of the original parameters (within 2%).")
@click.option("--allocate", type=click.Choice(["uniform", "loss"]),
              help="Spread a --flops/--params target uniformly or by imitation loss per MAC  [default: uniform]")
@click.option("--round-to", default=1, show_default=True, help="Kept counts are multiples of K (8 suits TensorRT).")
@click.option("--min-channels", default=1, show_default=True, help="Never keep fewer channels in a group.")
@click.option("--keep", "keep", multiple=True, metavar="GROUP=N", help="Per-group kept count (repeatable).")
@click.option("--norm", default="l1", show_default=True, type=click.Choice(["l1", "l2"]),
              help="Norm for --method magnitude.")
@click.option("--seed", default=0, show_default=True, help="Seed for --method random and position sampling.")
@click.option("--batch-size", default=32, show_default=True, help="Calibration batch size.")
@click.option("--max-positions", default=64, show_default=True,
              help="Spatial positions sampled per image and layer for statistics (0: all).")
@click.option("--holdout", default=0.1, show_default=True, help="Share of calibration samples held out.")
@click.option("--preprocess", default="none", show_default=True, type=click.Choice(["none", "imagenet"]),
              help="Preset for image folders.")
@click.option("--image-size", type=int, help="Image side for image folders (default: the model's).")
@click.option("--output-loss", default="kl", show_default=True, type=click.Choice(["kl", "mse"]),
              help="Global methods: discrepancy of the outputs (kl for classifiers).")
@click.option("--global-samples", default=256, show_default=True,
              help="Global methods: calibration samples the output loss is measured on.")
@click.option("--report", "report_path", type=click.Path(), help="Write the report JSON here.")
@click.option("--masked-reference", "masked_path", type=click.Path(),
              help="Also write the masked reference (original topology, removed channels zeroed).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
@user_errors
def prune(model, output, method, calib, refit, keep_ratio, flops, params, allocate, round_to, min_channels, keep,
          norm, seed, batch_size, max_positions, holdout, preprocess, image_size, output_loss, global_samples,
          report_path, masked_path, quiet):
    """Prune MODEL to a target and write the smaller model to OUTPUT."""
    for path in (output, report_path, masked_path):
        if path:
            check_output_path(path, model)
    if keep_ratio is None and flops is None and params is None:
        raise UserError("give a target: --keep-ratio R, --flops F or --params P")
    pruned, report = api.prune(model, calib, method=method, refit=refit, keep_ratio=keep_ratio, flops=flops,
                               params=params, allocate=allocate, round_to=round_to, min_channels=min_channels,
                               keep=_parse_keep(keep), norm=norm, seed=seed, batch_size=batch_size,
                               max_positions=max_positions or None, holdout=holdout, preprocess=preprocess,
                               image_size=image_size, output_loss=output_loss, global_samples=global_samples,
                               quiet=quiet)
    external = path_uses_external_data(model) or None  # weights beside the input: same for the output
    writes = [(output, lambda p: save_model(pruned, p, external_data=external))]
    if masked_path:
        masked = api.masked_reference(report)
        writes.append((masked_path, lambda p: save_model(masked, p, external_data=external)))
    if report_path:
        text = report.to_json().encode()
        writes.append((report_path, lambda p: atomic_write_bytes(p, text)))
    _write_all(writes)
    click.echo(report.summary())
    click.echo(f"size   {_size(model):.2f} MB -> {_size(output):.2f} MB")
    click.echo(f"wrote {output}")


@main.command("eval")
@click.argument("original", type=click.Path(dir_okay=True))
@click.argument("pruned", type=click.Path(dir_okay=True))
@click.option("--data", required=True, type=click.Path(), help=".npz: input name -> array, optional 'labels'.")
@click.option("--json", "as_json", is_flag=True)
@click.option("--batch-size", default=256, show_default=True)
@user_errors
def evaluate(original, pruned, data, as_json, batch_size):
    """Top-1 agreement, mean KL and accuracies of PRUNED against ORIGINAL on --data."""
    from onnxprune.evaluate import compare
    res = compare(original, pruned, data, batch_size)
    if as_json:
        click.echo(json.dumps(res, indent=2))
        return
    click.echo(f"samples    {res['samples']}")
    click.echo(f"agreement  {res['agreement']:.2%}")
    click.echo(f"mean KL    {res['kl']:.4f}")
    if res["accuracy_original"] is not None:
        click.echo(f"accuracy   {res['accuracy_original']:.2%} -> {res['accuracy_pruned']:.2%}")


@main.command("report")
@click.argument("report_json", type=click.Path())
@click.option("-o", "--output", required=True, type=click.Path(), help="HTML file to write.")
@user_errors
def report_cmd(report_json, output):
    """Render REPORT_JSON (from `prune --report`) as a self-contained HTML page with plots."""
    from onnxprune.report_html import render
    check_output_path(output, report_json)
    atomic_write_bytes(output, render(report_json).encode())
    click.echo(f"wrote {output}")


if __name__ == "__main__":
    main()
