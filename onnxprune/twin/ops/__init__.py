"""The twin's ops, one module per op family with the family names of `analysis/handlers/`, behind a
registry keyed by (domain, op_type) as the handlers are.

An op is `fn(step, inputs) -> tensor or list of tensors`: `step` is the node (`twin.step.Step`: its
attributes, opset, wanted outputs), `inputs` its input tensors (None for absent optional ones). To
support a new op, add its handler in `analysis/handlers/<family>.py` and its op here in
`twin/ops/<family>.py` (docs/DESIGN.md, "Adding an op").
"""
from __future__ import annotations

from collections.abc import Callable

_REGISTRY: dict[tuple[str, str], Callable] = {}


def register_fn(name: str, fn: Callable, domain: str = "") -> None:
    _REGISTRY[(domain, name)] = fn


def op(*names: str, domain: str = ""):
    def register(fn):
        for n in names:
            register_fn(n, fn, domain)
        return fn
    return register


def lookup(domain: str, op_type: str) -> Callable | None:
    return _REGISTRY.get(("" if domain in (None, "", "ai.onnx") else domain, op_type))


def supported_ops() -> list[str]:
    return sorted(o if not d else f"{d}::{o}" for d, o in _REGISTRY)


from . import concat, contrib, conv, elementwise, linear, pool, shape  # noqa: E402,F401  (registration)
