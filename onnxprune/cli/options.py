"""Click options generated from the option dataclasses of `onnxprune.options`, so the command line and
the API share one default, one validation and one help text per option (shared option groups, as
Polygraphy has them)."""
from __future__ import annotations

import dataclasses
import enum
import types
import typing

import click


def _base_type(hint):
    """`int | None` -> int; other hints unchanged."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return hint


def options_from(cls, choices: dict[str, typing.Sequence[str]] | None = None):
    """A decorator adding one click option per field of the option dataclass `cls` that has a command-line
    form (metadata `cli` not False). Field `name` becomes `--name-with-dashes`; enums become choices;
    `choices[name]` gives the choices of a plain string field (e.g. the method registry's names)."""
    hints = typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if f.metadata.get("cli", True)]

    def decorate(fn):
        for f in reversed(fields):
            meta = f.metadata
            kind = _base_type(hints[f.name])
            kw: dict = {"help": meta["help"]}
            default = f.default
            if meta.get("flag"):  # a switch: --name / --no-name
                flag = f.name.replace("_", "-")
                fn = click.option(f"--{flag}/--no-{flag}", f.name, default=f.default, show_default=True,
                                  help=meta["help"])(fn)
                continue
            if isinstance(kind, type) and issubclass(kind, enum.Enum):
                kw["type"] = click.Choice([m.value for m in kind])
                default = default.value if isinstance(default, enum.Enum) else default
            elif choices and f.name in choices:
                kw["type"] = click.Choice(list(choices[f.name]))
            elif kind is bool:  # a switch: present or not
                kw["is_flag"] = True
            else:
                kw["type"] = meta.get("cli_type", kind)  # e.g. str for a field that takes 'auto' or a number
            if default is not None:
                kw["default"], kw["show_default"] = default, not kw.get("is_flag")
            fn = click.option("--" + f.name.replace("_", "-"), f.name, **kw)(fn)
        return fn
    return decorate


def values_of(cls, values: dict) -> dict:
    """The values of `cls`'s command-line options among click's `values`."""
    return {f.name: values[f.name] for f in dataclasses.fields(cls) if f.name in values}
