"""paths.mode with the real daemon: every file and folder it creates has exactly the configured mode,
whatever umask it was started with.

The daemon's folders are pointed at a subtree that does not exist yet, so the daemon creates them
and their missing parents itself; then every entry of that subtree is checked, the ledger's -wal
and -shm included (they exist while the daemon runs).
"""

from __future__ import annotations

import os
import random
import shutil
import stat
from pathlib import Path
from typing import Any

import pytest

from edgeguard import seal
from tests.conftest import media
from tests.e2e.daemon.conftest import FOLDERS, Daemon, names, tagged_jpeg

PRIVATE = ("work", "state")  # always 0700: originals in the clear, the ledger
DEFAULT_FILES, DEFAULT_FOLDERS = 0o640, 0o750
UPLOADED = 0o604  # the originals' mode as dropped into incoming


def under_umask(umask: int) -> list[str]:
    """A `wrap` for Daemon.start: the daemon is exec-ed by a shell that set `umask` first."""
    return ["sh", "-c", f'umask {umask:04o}; exec "$@"', "sh"]


def fresh_paths(d: Daemon, root: Path, existing: dict[str, Path] | None = None) -> Path:
    """Point the daemon's folders at ROOT/deep/NAME (none of it exists yet; `existing`: keys pointed
    at folders of their own instead). Returns ROOT."""
    assert not root.exists()
    folders = {name: root / "deep" / name for name in FOLDERS} | (existing or {})
    d.configure(paths={name: str(path) for name, path in folders.items()})
    for name, path in folders.items():  # the harness's waits and ledger reads look here
        setattr(d, name, path)
    return root


def modes_under(root: Path) -> dict[str, tuple[str, int]]:
    """Every entry under `root`, and `root` itself: relative path -> (kind, permission bits)."""
    found = {".": ("dir", stat.S_IMODE(root.lstat().st_mode))}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            st = path.lstat()
            kind = "dir" if stat.S_ISDIR(st.st_mode) else "file" if stat.S_ISREG(st.st_mode) else "other"
            found[str(path.relative_to(root))] = (kind, stat.S_IMODE(st.st_mode))
    return found


def wrong_modes(found: dict[str, tuple[str, int]], files: int, folders: int) -> list[str]:
    """Entries whose mode is not the expected one (work and state: 0700), as readable lines."""
    wrong = []
    for rel, (kind, mode) in sorted(found.items()):
        if kind == "dir":
            want = 0o700 if rel in {f"deep/{name}" for name in PRIVATE} else folders
        elif kind == "file":
            want = files
        else:
            wrong.append(f"{rel}: neither a file nor a folder")
            continue
        if mode != want:
            wrong.append(f"{rel}: {mode:04o}, want {want:04o}")
    return wrong


def octal(value: int | str) -> int:
    """A mode as the config takes it: an int, or a string "0660" / "0o770"."""
    return value if isinstance(value, int) else int(value.removeprefix("0o"), 8)


def bad_video(tmp_path: Path) -> Path:
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(random.Random(64).randbytes(64 << 10))
    return bad


def drop(d: Daemon, src: Path, name: str) -> None:
    """Like Daemon.drop, the copy made 0604 (no configured mode, whatever this test's umask): an
    original the daemon keeps must get paths.mode.files from the daemon, not from the uploader."""
    tmp = d.incoming / f".{name}.uploading"
    shutil.copyfile(src, tmp)
    tmp.chmod(UPLOADED)
    os.rename(tmp, d.incoming / name)


def run_batch(d: Daemon, umask: int, photo: Path, clip: Path, bad: Path) -> None:
    """Start the daemon under `umask`, give it a photo, a clip and a file that fails; wait until idle."""
    d.start(wrap=under_umask(umask))
    drop(d, photo, "city.jpg")
    drop(d, clip, "clip.mp4")
    drop(d, bad, "bad.mp4")
    d.wait_states({"done": 2, "failed": 1}, timeout=120)
    d.wait_idle()


CASES = [
    # umask, originals, seal_failed, paths.mode (None: the defaults)
    pytest.param(0o000, "quarantine", False, None, id="umask0000-quarantine"),
    pytest.param(0o022, "seal", True, None, id="umask0022-seal-seal_failed"),
    # Narrower than the defaults under a umask that takes nothing away...
    pytest.param(0o000, "keep", True, {"files": 0o600, "folders": 0o700}, id="umask0000-keep-0600-0700"),
    # ... and wider than the umask lets through (group write), as strings.
    pytest.param(0o022, "seal", False, {"files": "0660", "folders": "0o770"}, id="umask0022-seal-0660-0770"),
]


@pytest.mark.parametrize(("umask", "originals", "seal_failed", "modes"), CASES)
def test_every_created_file_and_folder_has_the_configured_mode(
    daemon: Daemon,
    clip10: Path,
    tmp_path: Path,
    umask: int,
    originals: str,
    seal_failed: bool,
    modes: dict[str, Any] | None,
) -> None:
    d = daemon
    root = fresh_paths(d, d.root / "fresh")
    settings: dict[str, Any] = {
        "daemon": {"originals": originals, "seal_failed": seal_failed},
        "audit": {"sidecar": True},
    }
    if originals == "seal" or seal_failed:
        settings["seal"] = {"recipients": [seal.keygen().recipient]}
    if modes is not None:
        settings["paths"] = {"mode": modes}
    d.configure(**settings)
    files = octal(modes["files"]) if modes else DEFAULT_FILES
    folders = octal(modes["folders"]) if modes else DEFAULT_FOLDERS
    photo = tagged_jpeg(media("city.jpg"), tmp_path / "city.jpg", f"modes {umask:04o} {originals}")

    run_batch(d, umask, photo, clip10, bad_video(tmp_path))

    # What is there, so that the modes below are checked on every kind of file the daemon makes.
    kept = {"quarantine": d.quarantine, "keep": d.processed}
    assert names(d.output) == ["city.jpg", "city.jpg.audit.json", "clip.mp4", "clip.mp4.audit.json"]
    if originals == "seal":
        assert names(d.sealed) == [f"{n}{s}" for n in ("city.jpg", "clip.mp4") for s in (".age", ".age.json")]
    else:
        assert names(kept[originals]) == ["city.jpg", "clip.mp4"]
    if seal_failed:
        assert names(d.failed) == ["bad.mp4.age", "bad.mp4.age.error.json", "bad.mp4.age.json"]
    else:
        assert names(d.failed) == ["bad.mp4", "bad.mp4.error.json"]
    # While the daemon runs, the ledger has its -wal and -shm beside it.
    assert names(d.state) == ["ledger.sqlite3", "ledger.sqlite3-shm", "ledger.sqlite3-wal"]
    assert names(d.incoming) == names(d.work) == []

    found = modes_under(root)
    assert {"deep", *(f"deep/{name}" for name in FOLDERS)} <= set(found)  # the daemon made them all
    wrong = wrong_modes(found, files, folders)
    assert not wrong, "wrong modes:\n" + "\n".join(wrong)
    assert d.terminate(timeout=30) == 0


def test_folders_the_operator_made_keep_their_mode_but_work_and_state_are_made_private(
    daemon: Daemon, tmp_path: Path
) -> None:
    d = daemon
    mine = d.root / "operator"
    output, work, state = mine / "output", mine / "work", mine / "state"
    for folder, mode in ((mine, 0o755), (output, 0o775), (work, 0o755), (state, 0o750)):
        folder.mkdir()
        folder.chmod(mode)  # exactly, whatever this test's umask
    root = fresh_paths(d, d.root / "fresh", existing={"output": output, "work": work, "state": state})
    photo = tagged_jpeg(media("city.jpg"), tmp_path / "city.jpg", "the operator's folders")

    d.start(wrap=under_umask(0o000))
    drop(d, photo, "city.jpg")
    d.wait_states({"done": 1}, timeout=120)
    d.wait_idle()

    # The operator's folders keep their modes; what the daemon puts in them gets paths.mode.files.
    assert stat.S_IMODE(mine.stat().st_mode) == 0o755
    assert stat.S_IMODE(output.stat().st_mode) == 0o775
    assert names(output) == ["city.jpg"]
    assert stat.S_IMODE((output / "city.jpg").stat().st_mode) == DEFAULT_FILES
    # ... but work (originals in the clear) and state (the ledger) are owner-only, made so or not.
    assert stat.S_IMODE(work.stat().st_mode) == stat.S_IMODE(state.stat().st_mode) == 0o700
    assert names(state) == ["ledger.sqlite3", "ledger.sqlite3-shm", "ledger.sqlite3-wal"]
    assert {stat.S_IMODE(p.stat().st_mode) for p in state.iterdir()} == {DEFAULT_FILES}
    # The folders the daemon did make (the rest, and their parents) get paths.mode.folders.
    found = modes_under(root)
    assert {"deep/incoming", "deep/quarantine"} <= set(found) and "deep/output" not in found
    wrong = wrong_modes(found, DEFAULT_FILES, DEFAULT_FOLDERS)
    assert not wrong, "wrong modes:\n" + "\n".join(wrong)
    assert d.terminate(timeout=30) == 0
