"""The `onnxprune` command (also `python -m onnxprune`): one subcommand per job, in a module each.

User errors (bad files, data, options, targets) print one line on stderr and exit with code 2; so do
click's own usage errors. SIGTERM and SIGHUP end a run as Ctrl-C does: the exception they raise unwinds
through the writers, which remove their temporary files, and the exit code is 128 + the signal number.
A closed standard output (`onnxprune analyze M | head -1`) ends the run quietly with exit code 1.
See docs/DESIGN.md, "The command line"."""
from __future__ import annotations

import logging
import signal
import sys

import click

from ..graph.save import deliver
from .common import fail


class Terminated(BaseException):
    """SIGTERM or SIGHUP arrived: unwinds like KeyboardInterrupt, so every cleanup path runs."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


_SIGNALS = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGHUP") if hasattr(signal, n))


def _on_signal(signum, frame):
    for s in _SIGNALS:  # a second signal must not interrupt the cleanup of the first
        signal.signal(s, signal.SIG_IGN)
    deliver(Terminated(signum))  # now, or at the end of a write that must not be cut (graph.save)


def _on_interrupt(signum, frame):
    deliver(KeyboardInterrupt())


class _Main(click.Group):
    """Click's usage errors (unknown option, bad choice, missing argument) as one line, exit code 2."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            previous = {s: signal.signal(s, _on_signal) for s in _SIGNALS}
            previous[signal.SIGINT] = signal.signal(signal.SIGINT, _on_interrupt)
        except ValueError:  # not the main thread: signals stay as they are
            previous = {}
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except Terminated as exc:
            click.echo(f"onnxprune: terminated by {signal.Signals(exc.signum).name}", err=True)
            sys.exit(128 + exc.signum)
        except click.exceptions.NoArgsIsHelpError as exc:
            click.echo(exc.ctx.get_help() if exc.ctx else "")
            sys.exit(0)
        except click.exceptions.UsageError as exc:
            where = f"{exc.ctx.command_path}: " if exc.ctx is not None else ""
            fail(f"{where}{exc.format_message()} (see --help)")
        except click.exceptions.Abort:
            click.echo("onnxprune: interrupted", err=True)
            sys.exit(130)
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
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
