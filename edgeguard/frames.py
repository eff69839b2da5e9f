"""The arrays every stage passes on: one definition each."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

Image = npt.NDArray[np.uint8]  # HxWx3 BGR (or HxWx4 BGRA), as OpenCV and PyAV hand it over
Mask = npt.NDArray[np.uint8]  # HxW, 255 = hide
