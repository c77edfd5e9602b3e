"""One calibration file's (or one dict's) arrays, by model input name."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from .npy_stream import NpyStream


@dataclass
class Part:
    """One file's (or one dict's) arrays, by input name."""
    arrays: Mapping[str, NpyStream | np.ndarray]  # _NpyStream or np.ndarray
    size: int
