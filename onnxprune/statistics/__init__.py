"""The statistics stage: the consumers of a group as linear maps over features, their streamed second
moments (A = X̃ᵀX̃, B = X̃ᵀY, yy), and what follows from them: a group's Gram terms, losses, ridge
re-fits, re-fit loss curves. Memory is bounded by the consumers' feature counts, never by the data set.
See docs/DESIGN.md, "Statistics"."""
from .consumer import Consumer, NotSupported, consumers_of, linear_bias_add, residual_sum
from .moments import Stats

__all__ = ["Consumer", "NotSupported", "Stats", "consumers_of", "linear_bias_add", "residual_sum"]
