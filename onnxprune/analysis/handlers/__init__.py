"""One handler per op family, behind a registry keyed by (domain, op_type).

A handler is `fn(node, analysis)`: it reads the layouts of the node's inputs, sets the layouts of
its outputs, unites channels that must stay together, freezes channels it cannot follow, and
records the edits the rewriter needs and the MACs the cost model counts. An op without a handler
freezes every channel that reaches it. To support a new op, add one handler.
"""
from __future__ import annotations

from collections.abc import Callable

_REGISTRY: dict[tuple[str, str], Callable] = {}


def handles(*ops: str, domain: str = ""):
    def register(fn):
        for op in ops:
            _REGISTRY[(domain, op)] = fn
        return fn
    return register


def lookup(node) -> Callable | None:
    domain = "" if node.domain in (None, "", "ai.onnx") else node.domain
    return _REGISTRY.get((domain, node.op))


def supported_ops() -> list[str]:
    return sorted(op if not d else f"{d}::{op}" for d, op in _REGISTRY)


from . import concat, contrib, conv, elementwise, linear, pool, shape  # noqa: E402,F401  (registration)
