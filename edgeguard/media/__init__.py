"""Media input and output: `kinds` (what a path is), `video`, `audio`, `image` (decode and encode).

Only the kinds are named here: importing them loads neither PyAV nor OpenCV, so the config can
derive its watch patterns from them cheaply.
"""

from __future__ import annotations

from edgeguard.media.kinds import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, media_kind

__all__ = ["IMAGE_EXTENSIONS", "VIDEO_EXTENSIONS", "media_kind"]
