"""What runs on a cluster node: an actor that holds the model and protects what it is sent.

It computes and nothing else: it reads the bytes it is handed and returns the protected bytes,
working in a private temporary folder it removes; it never sees the gateway's folders. A task
may run twice (an actor killed mid-task is retried elsewhere, or an orphan finishes a copy):
nothing it does is visible anywhere, so a second run costs only time.

The model files arrive from the gateway once per node, as Ray objects with their sha256, and
are kept in the node's cache under that hash; every load checks the hash again.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import socket
import stat
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeguard import __version__
from edgeguard.errors import EdgeguardError, FileError, InputError

log = logging.getLogger(__name__)

# The config sections an actor protects with; the rest (folders, sealing, daemon) is the gateway's.
SECTIONS = ("detector", "protect", "video", "temporal", "media")


@dataclass(frozen=True)
class ModelFile:
    role: str
    filename: str
    sha256: str
    data: Any  # a Ray ObjectRef to the file's bytes (fetched only by a node that lacks the file)
    explicit: bool  # given as detector.files.<role>, not found through the manifest


@dataclass(frozen=True)
class Parcel:
    """The model as the gateway ships it: its manifest's text and its files."""

    name: str
    manifest: str  # the manifest's YAML, so a custom model needs nothing installed on the node
    files: tuple[ModelFile, ...]


def _sha256(path: Path) -> str:
    with path.open("rb") as stream:
        return hashlib.file_digest(stream, "sha256").hexdigest()


def cache_root(node_cache: str) -> Path:
    return Path(node_cache or tempfile.gettempdir()) / "edgeguard-models"


def private_folder(path: Path) -> Path:
    """`path` made (or found) as a real folder of this user's that no one else can write.

    In a shared /tmp another user could have made it (or a link by its name) first, and swap the
    model's files between their check and their load, or point the clean-up of dead actors elsewhere.
    """
    path.mkdir(exist_ok=True, mode=0o700)
    st = path.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o022:
        raise EdgeguardError(f"{path} is not a folder of this user's alone: set cluster.node_cache")
    return path


def place(parcel: Parcel, root: Path, fetch: Callable[[Any], bytes]) -> dict[str, Path]:
    """Each model file in the node's cache (fetched with `fetch(ref)` only if missing or wrong), by role."""
    root.parent.mkdir(parents=True, exist_ok=True)
    store = private_folder(private_folder(root) / "sha256")
    placed: dict[str, Path] = {}
    for f in parcel.files:
        path = store / f.sha256
        if not (path.is_file() and _sha256(path) == f.sha256):
            data: bytes = fetch(f.data)
            got = hashlib.sha256(data).hexdigest()
            if got != f.sha256:
                raise EdgeguardError(f"model file {f.filename} arrived damaged: sha256 {got}, expected {f.sha256}")
            fd, tmp = tempfile.mkstemp(dir=store, prefix=".incoming-")
            try:
                with os.fdopen(fd, "wb") as out:
                    out.write(data)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(tmp, path)  # several actors of one node may place the same file: same bytes
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            log.info("received model file %s (%d bytes, sha256 %s)", f.filename, len(data), f.sha256[:16])
        placed[f.role] = path
    return placed


def settings(sections: dict[str, Any], parcel: Parcel, placed: dict[str, Path], folder: Path) -> Any:
    """The actor's config: the gateway's protection sections, the model from the node's cache."""
    from edgeguard.config import Config

    models = folder / "models"
    manifests = folder / "manifests"
    (models / parcel.name).mkdir(parents=True)
    manifests.mkdir()
    (manifests / f"{parcel.name}.yaml").write_text(parcel.manifest, encoding="utf-8")
    data = {k: v for k, v in sections.items() if k in SECTIONS}
    detector = dict(data.get("detector", {}))
    files = dict(detector.get("files") or {})
    for f in parcel.files:
        if f.explicit:
            files[f.role] = str(placed[f.role])
        else:
            (models / parcel.name / f.filename).symlink_to(placed[f.role])
    detector["files"] = files
    data["detector"] = detector
    data["models"] = {"dir": str(models), "manifests": [str(manifests)]}
    return Config.model_validate(data)


def own_folder(parent: Path) -> Path:
    """This actor's working folder, PARENT/PID; first removing those of actors that are gone.

    A killed actor (its node lost, the daemon's driver gone) cleans up nothing: the next actor on
    the node does, so footage does not pile up on a worker's disk.
    """
    private_folder(parent.parent)
    private_folder(parent)
    for folder in parent.iterdir():
        if not folder.name.isdigit() or int(folder.name) == os.getpid():
            continue
        try:
            os.kill(int(folder.name), 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
            log.info("removed %s, left by an actor that is gone", folder)
        except PermissionError:  # alive, as another user
            continue
    folder = parent / str(os.getpid())
    shutil.rmtree(folder, ignore_errors=True)  # a dead actor's, whose PID this one got
    folder.mkdir(mode=0o700)
    return folder


def check_node(parcel: Parcel, node_cache: str) -> dict[str, Any]:
    """What `edgeguard doctor` asks of a node (a Ray task of no CPU): its versions, and the model's
    files as it holds them after receiving them, by sha256."""
    import ray

    placed = place(parcel, cache_root(node_cache), ray.get)
    return {
        "edgeguard": __version__,
        "ray": ray.__version__,
        "weights": {role: _sha256(path) for role, path in sorted(placed.items())},
    }


class Protector:
    """A Ray actor (see `bridge`): the model loaded once, then one file or segment per call."""

    def __init__(self, sections: dict[str, Any], parcel: Parcel, node_cache: str) -> None:
        import ray

        from edgeguard.engine import Engine

        # The gateway's models folder means nothing here; the parcel says where the model is.
        os.environ.pop("EDGEGUARD_MODELS_DIR", None)
        root = cache_root(node_cache)
        placed = place(parcel, root, ray.get)
        # By host: a node_cache shared between nodes must not have one node clean another's folders.
        self._folder = own_folder(root / f"actors-{socket.gethostname()}")
        self.cfg = settings(sections, parcel, placed, self._folder)
        self.engine = Engine(self.cfg)
        self.node = ray.get_runtime_context().get_node_id()
        self._steps = 0  # frames handed on, over every call (see `pulse`)

    def about(self) -> dict[str, Any]:
        """Who this actor is, for the pool and `edgeguard doctor`."""
        import ray

        return {
            "node": self.node,
            "edgeguard": __version__,
            "ray": ray.__version__,
            "model": self.engine.model_name,
            "target": self.engine.target,
            "weights": dict(self.engine.weights),
            "pid": os.getpid(),
        }

    def pulse(self) -> int:
        """Frames this actor has handed on so far. Called in its own concurrency group (`pool.PULSE`),
        it answers while `protect` works: a count that stands still means a hung piece, and a stopped
        actor never answers."""
        return self._steps

    def _stepped(self, done: int, total: int | None) -> None:
        self._steps += 1  # only `protect`'s thread writes it

    def protect(self, data: bytes, suffix: str, out_suffix: str) -> tuple[bytes | None, dict[str, Any]]:
        """The protected bytes and the engine's result; (None, why not) when they cannot be had:
        the input's fault (`input`), or this node's (`transient`: its disk is full, say)."""
        with tempfile.TemporaryDirectory(dir=self._folder) as tmp:
            src = Path(tmp) / f"in{suffix}"
            out = Path(tmp) / f"out{out_suffix}"
            try:
                src.write_bytes(data)
                result = self.engine.protect_file(src, out, progress=self._stepped)
                protected = out.read_bytes()
            except OSError as exc:  # its own folder (full, gone): the node's fault, never the file's
                reason = f"the node cannot work on it: {exc.strerror or exc}"
                return None, {
                    "reason": reason,
                    "stage": "remote",
                    "input": False,
                    "incomplete": False,
                    "transient": True,
                }
            except FileError as exc:
                incomplete = isinstance(exc, InputError) and exc.incomplete
                return None, {
                    "reason": exc.reason,
                    "stage": exc.stage,
                    "input": isinstance(exc, InputError),
                    "incomplete": incomplete,
                    "transient": exc.transient,  # this node's disk, not the file: retried later
                }
            return protected, {**result.as_dict(), "node": self.node}
