"""The environment variables edgeguard reads: each name spelt once."""

from __future__ import annotations

import os
from pathlib import Path

CONFIG = "EDGEGUARD_CONFIG"  # the config file when -c is not given
MODELS_DIR = "EDGEGUARD_MODELS_DIR"  # overrides models.dir
MODEL_SOURCE = "EDGEGUARD_MODEL_SOURCE"  # offline folder for `models fetch` when --from is not given


def path(name: str) -> Path | None:
    """The folder or file a variable names, or None when it is unset or empty."""
    value = os.environ.get(name)
    return Path(value) if value else None
