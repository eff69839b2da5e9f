"""The daemon's folders as `prepare` checks them at start."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeguard.config import PathsConfig
from edgeguard.daemon.folders import prepare
from edgeguard.errors import SetupError


def _paths(root: Path, **same: str) -> PathsConfig:
    return PathsConfig.model_validate({k: str(root / same.get(k, k)) for k in PathsConfig.FOLDERS})


@pytest.mark.parametrize(("key", "other"), [("sealed", "work"), ("sealed", "incoming"), ("state", "output")])
def test_a_folder_that_must_be_its_own_is_refused_when_shared(tmp_path: Path, key: str, other: str) -> None:
    """Sealed files in work would be adopted as originals at the next start; a shared state or
    output folder mixes the ledger or outputs with other files."""
    with pytest.raises(SetupError, match=rf"paths\.\w+ and paths\.\w+ are the same folder \({tmp_path / other}\)"):
        prepare(_paths(tmp_path, **{key: other}))


def test_quarantine_and_processed_may_share_a_folder(tmp_path: Path) -> None:
    folders = prepare(_paths(tmp_path, processed="quarantine"))
    assert folders.processed == folders.quarantine
