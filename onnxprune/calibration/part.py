"""One calibration file's (or one dict's) arrays, by model input name."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Part:
    """One file's (or one dict's) arrays, by input name."""
    arrays: dict[str, object]  # _NpyStream or np.ndarray
    size: int
