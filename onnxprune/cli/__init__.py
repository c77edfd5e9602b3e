"""The `onnxprune` command (also `python -m onnxprune`): one subcommand per job, in a module each.

User errors (bad files, data, options, targets) print one line on stderr and exit with code 2; so do
click's own usage errors. See docs/DESIGN.md, "The command line"."""
from __future__ import annotations

import logging
import sys

import click

from .common import fail


class _Main(click.Group):
    """Click's usage errors (unknown option, bad choice, missing argument) as one line, exit code 2."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.NoArgsIsHelpError as exc:
            click.echo(exc.ctx.get_help() if exc.ctx else "")
            sys.exit(0)
        except click.exceptions.UsageError as exc:
            where = f"{exc.ctx.command_path}: " if exc.ctx is not None else ""
            fail(f"{where}{exc.format_message()} (see --help)")
        except click.exceptions.Abort:
            click.echo("onnxprune: interrupted", err=True)
            sys.exit(130)
        if isinstance(code, int) and code:
            sys.exit(code)
        return code


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="onnxprune")
@click.option("-q", "--quiet", is_flag=True, help="Only errors.")
def main(quiet):
    """Structured channel pruning of ONNX models."""
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(message)s")


def _register() -> None:
    from . import analyze, bench, evaluate, prune, report
    for module in (analyze, prune, evaluate, report, bench):
        main.add_command(module.command)


_register()
