"""What every subcommand shares: user errors as one line and exit code 2, and the outputs written all
or none."""
from __future__ import annotations

import functools
import os
import sys

import click

from ..errors import UserError
from ..options import OptionError, parse_input_shape

INPUT_SHAPE_HELP = ("Shape of a model input with symbolic dimensions, NAME=D0,D1,... batch first (repeatable; "
                    "the name may be left out for a single input): sizes its layers for their MACs.")


def input_shapes(values) -> dict | None:
    """`--input-shape NAME=D0,D1,...` values (repeatable) as name -> dims."""
    out: dict = {}
    for v in values:
        name, dims = parse_input_shape(v)
        if name in out:
            raise OptionError("input_shapes", v, f"input '{name}' is given twice" if name else "given twice")
        out[name] = dims
    return out or None

# options whose command-line flag is not the API keyword spelt with dashes
FLAGS = {"calibration": "--calib", "input_shapes": "--input-shape"}


def one_line(text: str) -> str:
    return " ".join(text.split())


def fail(message: str) -> None:
    click.echo(f"onnxprune: error: {one_line(message)}", err=True)
    sys.exit(2)


def option_message(exc: OptionError) -> str:
    return exc.flag_message(FLAGS.get(exc.option))


def user_errors(fn):
    """Turn UserError (and unwritable paths) into one line on stderr and exit code 2."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except OptionError as exc:
            fail(option_message(exc))
        except UserError as exc:
            fail(str(exc))
        except BrokenPipeError:
            raise  # standard output was closed (`| head`): click exits quietly
        except OSError as exc:  # unwritable, missing, too long... paths
            what = exc.filename if exc.filename is not None else "cannot read or write"
            fail(f"{what}: {exc.strerror or str(exc)}")
    return wrapper


def write_all(writes) -> None:
    """Write every output or none: on a failure (or a signal) the files this run created are removed, the
    one being written included. A file that existed before is never removed (a write replaces it whole
    or not at all)."""
    created: list[str] = []
    try:
        for path, write in writes:
            created += [p for p in (str(path), str(path) + ".data") if not os.path.lexists(p)]
            write(path)
    except BaseException:
        for p in created:
            if os.path.lexists(p):
                os.unlink(p)
        raise
