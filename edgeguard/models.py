"""Model manifests and provisioning: which files a model needs, where they live, how to get them.

A manifest (`models/<name>.yaml`) names a model's backend, its native input size, free
backend parameters and its files (role -> filename, checksum, url). Files live in
`<models_dir>/<name>/<filename>`; `fetch` puts them there (download or `--from DIR` offline),
always verifying the checksum before an atomic rename, and `resolve` finds and verifies them
before a detector loads them.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import logging
import os
import re
import shutil
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import Any

import yaml

from edgeguard import env
from edgeguard.durable import fsync_dir
from edgeguard.errors import ConfigError, ModelChecksumError, ModelMissingError, SetupError

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "mask_rcnn_inception_v2_coco"

_CHUNK = 1 << 20
_STALE_STAGING_SECONDS = 24 * 3600
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_CHECKSUM_RE = re.compile(r"^(?:(sha256):([0-9a-fA-F]{64})|(sha1):([0-9a-fA-F]{40}))$")
_TOP_KEYS = frozenset({"name", "description", "backend", "input_size", "labels", "params", "files"})
_FILE_KEYS = frozenset({"filename", "checksum", "url", "archive_member", "archive_checksum", "optional"})


@dataclass(frozen=True)
class ModelFile:
    role: str
    filename: str
    checksum: str | None  # "sha256:<hex>" or "sha1:<hex>"
    url: str | None
    archive_member: str | None  # path inside the .tar.gz at `url`
    archive_checksum: str | None
    optional: bool


@dataclass(frozen=True)
class Manifest:
    name: str
    backend: str
    description: str
    input_size: tuple[int, int] | None  # (w, h)
    labels: str | None  # role of the labels file
    params: Mapping[str, Any]
    files: Mapping[str, ModelFile]
    path: Path


# --- manifests ------------------------------------------------------------------------------


def builtin_manifest_dir() -> Path:
    """The manifests shipped with edgeguard: the source tree's `models/`, else the installed copy."""
    repo = Path(__file__).resolve().parents[1] / "models"
    # Checked by the default manifest, not by the folder alone: an installed package's parent is
    # site-packages, where some other distribution may have dropped a `models/` folder.
    if (repo / f"{DEFAULT_MODEL}.yaml").is_file():
        return repo
    share = Path(sys.prefix) / "share" / "edgeguard" / "models"
    return share if share.is_dir() else repo


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (PyYAML silently keeps the last one)."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_manifests(dirs: Sequence[Path]) -> dict[str, Manifest]:
    """Load every `*.yaml`/`*.yml` manifest in `dirs`, searched in order: the first dir that
    defines a name wins (so user folders listed before the built-in one override it).

    Missing dirs are skipped. All problems in all files are reported together in one ConfigError.
    """
    manifests: dict[str, Manifest] = {}
    problems: list[str] = []
    for directory in dirs:
        if not directory.exists():
            logger.debug("manifest dir %s does not exist; skipped", directory)
            continue
        if not directory.is_dir():
            problems.append(f"{directory}: not a directory")
            continue
        in_this_dir: set[str] = set()
        paths = sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")])
        for path in paths:
            manifest, file_problems = _parse_manifest(path)
            problems.extend(file_problems)
            if manifest is None:
                continue
            if manifest.name in in_this_dir:
                problems.append(f"{path}: name: {manifest.name!r} is defined twice in {directory}")
                continue
            in_this_dir.add(manifest.name)
            if manifest.name in manifests:
                logger.info("model %s: %s overrides %s", manifest.name, manifests[manifest.name].path, path)
                continue
            manifests[manifest.name] = manifest
    if problems:
        raise ConfigError(problems)
    return manifests


def find_manifest(name: str, dirs: Sequence[Path]) -> Manifest:
    manifests = load_manifests(dirs)
    try:
        return manifests[name]
    except KeyError:
        available = ", ".join(sorted(manifests)) or "none"
        searched = ", ".join(str(d) for d in dirs)
        raise ConfigError([f"unknown model {name!r}; available: {available} (manifests in {searched})"]) from None


def _parse_manifest(path: Path) -> tuple[Manifest | None, list[str]]:
    problems: list[str] = []

    def bad(key: str, message: str) -> None:
        problems.append(f"{path}: {key}: {message}")

    def bad_in(role: str) -> Callable[[str, str], None]:
        return lambda key, message: bad(f"files.{role}.{key}", message)

    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
    except (OSError, UnicodeDecodeError) as exc:
        return None, [f"{path}: cannot read: {exc}"]
    except yaml.YAMLError as exc:
        return None, [f"{path}: invalid YAML: {' '.join(str(exc).split())}"]
    if not isinstance(data, dict):
        return None, [f"{path}: (top): must be a mapping, got {type(data).__name__}"]

    for key in sorted(set(data) - _TOP_KEYS, key=str):
        bad(str(key), f"unknown key (allowed: {', '.join(sorted(_TOP_KEYS))})")

    name = data.get("name")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        bad("name", f"must be a plain name (letters, digits, _ . -), got {name!r}")
        name = None
    elif name != path.stem:
        # The name is the folder the files go to and what users type; one name, one file.
        bad("name", f"{name!r} must match the file name {path.stem!r}")

    backend = data.get("backend")
    if not isinstance(backend, str) or not _NAME_RE.match(backend):
        bad("backend", f"must be a backend type key such as 'maskrcnn' or 'yolox', got {backend!r}")

    description = data.get("description", "")
    if not isinstance(description, str):
        bad("description", f"must be a string, got {description!r}")

    input_size: tuple[int, int] | None = None
    raw_size = data.get("input_size")
    if raw_size is not None:
        if (
            isinstance(raw_size, list)
            and len(raw_size) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in raw_size)
        ):
            input_size = (raw_size[0], raw_size[1])
        else:
            bad("input_size", f"must be [width, height] of positive integers, got {raw_size!r}")

    params = data.get("params", {})
    if params is None:
        params = {}
    if not isinstance(params, dict) or not all(isinstance(k, str) for k in params):
        bad("params", "must be a mapping with string keys")
        params = {}

    files: dict[str, ModelFile] = {}
    raw_files = data.get("files")
    if not isinstance(raw_files, dict) or not raw_files:
        bad("files", "must be a non-empty mapping of role -> file")
    else:
        for role, spec in raw_files.items():
            model_file = _parse_file(str(role), spec, bad_in(str(role)))
            if model_file is not None:
                files[model_file.role] = model_file
        seen: dict[str, str] = {}
        for model_file in files.values():
            if model_file.filename in seen:
                bad(
                    f"files.{model_file.role}.filename",
                    f"{model_file.filename!r} is also the file of role {seen[model_file.filename]!r}",
                )
            seen[model_file.filename] = model_file.role

    labels = data.get("labels")
    roles = raw_files if isinstance(raw_files, dict) else {}
    if labels is not None and (not isinstance(labels, str) or labels not in roles):
        bad("labels", f"must name a role under files ({', '.join(map(str, roles))}), got {labels!r}")

    if problems or name is None:
        return None, problems
    return (
        Manifest(
            name=name,
            backend=str(backend),
            description=str(description).strip(),
            input_size=input_size,
            labels=labels,
            params=MappingProxyType(dict(params)),
            files=MappingProxyType(files),
            path=path,
        ),
        [],
    )


def _parse_file(role: str, spec: object, bad: Callable[[str, str], None]) -> ModelFile | None:
    """Validate one `files.<role>` entry; `bad(key, message)` records a problem."""
    ok = True

    def fail(key: str, message: str) -> None:
        nonlocal ok
        ok = False
        bad(key, message)

    if not _NAME_RE.match(role):
        fail("(role)", "a role must be a plain name (letters, digits, _ . -)")
    if not isinstance(spec, dict):
        fail("(file)", f"must be a mapping with at least 'filename', got {spec!r}")
        return None
    for key in sorted(set(spec) - _FILE_KEYS, key=str):
        fail(str(key), f"unknown key (allowed: {', '.join(sorted(_FILE_KEYS))})")

    filename = spec.get("filename")
    if not isinstance(filename, str) or not _NAME_RE.match(filename):
        # A bare name: it is joined to the model's folder and must not escape it.
        fail("filename", f"must be a bare file name, got {filename!r}")

    def checksum(key: str) -> str | None:
        value: object = spec.get(key)
        if value is None:
            return None
        if isinstance(value, str) and _CHECKSUM_RE.match(value):
            return value.lower()
        fail(key, f"must be 'sha256:<64 hex>' or 'sha1:<40 hex>', got {value!r}")
        return None

    file_checksum = checksum("checksum")
    archive_checksum = checksum("archive_checksum")

    url = spec.get("url")
    if url is not None:
        parts = urllib.parse.urlsplit(url) if isinstance(url, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
            fail("url", f"must be an http(s) URL, got {url!r}")

    member = spec.get("archive_member")
    if member is not None:
        pure = PurePosixPath(member) if isinstance(member, str) and member else None
        if pure is None or pure.is_absolute() or ".." in pure.parts:
            fail("archive_member", f"must be a relative path inside the archive, got {member!r}")
        if url is None:
            fail("archive_member", "needs 'url' (the archive)")
    if spec.get("archive_checksum") is not None and member is None:
        fail("archive_checksum", "only applies with 'archive_member'")

    optional = spec.get("optional", False)
    if not isinstance(optional, bool):
        fail("optional", f"must be true or false, got {optional!r}")

    if not ok:
        return None
    return ModelFile(
        role=role,
        filename=str(filename),
        checksum=file_checksum,
        url=url,
        archive_member=member,
        archive_checksum=archive_checksum,
        optional=bool(optional),
    )


# --- verification and lookup ----------------------------------------------------------------


def file_path(manifest: Manifest, role: str, models_dir: Path) -> Path:
    try:
        model_file = manifest.files[role]
    except KeyError:
        roles = ", ".join(manifest.files)
        raise ConfigError([f"model {manifest.name}: no file role {role!r} (roles: {roles})"]) from None
    return models_dir / manifest.name / model_file.filename


def _digest(path: Path, algorithm: str) -> str:
    # SHA-1 is what upstream publishes for some files; flag it so FIPS builds still allow it.
    hasher = hashlib.new(algorithm, usedforsecurity=algorithm != "sha1")
    with path.open("rb") as stream:
        while chunk := stream.read(_CHUNK):
            hasher.update(chunk)
    return hasher.hexdigest()


def _mismatch(path: Path, checksum: str) -> str | None:
    """None if `path` has `checksum`, else "expected <checksum>, got <actual>"."""
    match = _CHECKSUM_RE.match(checksum)
    if match is None:
        raise ConfigError([f"bad checksum {checksum!r}: must be 'sha256:<hex>' or 'sha1:<hex>'"])
    algorithm = match.group(1) or match.group(3)
    expected = (match.group(2) or match.group(4)).lower()
    try:
        actual = _digest(path, algorithm)
    except OSError as exc:
        raise SetupError(f"{path}: cannot read: {exc}") from exc
    if actual == expected:
        return None
    return f"expected {algorithm}:{expected}, got {algorithm}:{actual}"


def verify_file(path: Path, checksum: str | None) -> None:
    """Raise ModelMissingError if `path` is not a file, ModelChecksumError if its digest differs."""
    if not path.is_file():
        raise ModelMissingError(f"{path}: not found")
    if checksum is not None and (mismatch := _mismatch(path, checksum)) is not None:
        raise ModelChecksumError(f"{path}: checksum mismatch: {mismatch}")


def resolve(
    manifest: Manifest,
    models_dir: Path,
    *,
    verify: bool = True,
    roles: Sequence[str] | None = None,
) -> dict[str, Path]:
    """Paths of the model's files, checked (and verified) before anything loads them.

    `roles=None` means every non-optional role; otherwise exactly the roles given, optional or not.
    """
    wanted = [r for r, f in manifest.files.items() if not f.optional] if roles is None else list(roles)
    paths = {role: file_path(manifest, role, models_dir) for role in wanted}
    missing = [path.name for path in paths.values() if not path.is_file()]
    if missing:
        raise ModelMissingError(
            f"model {manifest.name}: {', '.join(missing)} not found in {models_dir / manifest.name}; "
            f"run `edgeguard models fetch {manifest.name}` (or --from DIR offline)"
        )
    if verify:
        for role, path in paths.items():
            try:
                verify_file(path, manifest.files[role].checksum)
            except ModelChecksumError as exc:
                raise ModelChecksumError(
                    f"model {manifest.name}: {exc}; run `edgeguard models fetch {manifest.name}` to replace it"
                ) from exc
    return paths


# --- provisioning ---------------------------------------------------------------------------


class _UnavailableError(Exception):
    """A file could not be obtained (not in the source folder, network failure)."""

    def __init__(self, error: SetupError) -> None:
        super().__init__(str(error))
        self.error = error


def fetch(
    manifest: Manifest,
    models_dir: Path,
    *,
    source: Path | None = None,
    include_optional: bool = True,
    timeout: float = 60.0,
) -> list[Path]:
    """Put the model's files in `models_dir/<name>/`; return the paths now in place.

    Files already present and verified are kept. With `source`, files are copied from that folder
    (offline); otherwise downloaded. Every file is verified before an atomic rename, so a file in
    place is always a verified one. A checksum mismatch always raises ModelChecksumError; an
    optional file that cannot be obtained is skipped with a warning.
    """
    target_dir = models_dir / manifest.name
    created = not target_dir.exists()
    try:
        target_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SetupError(f"cannot create {target_dir}: {exc}") from exc
    _remove_stale_staging(target_dir)
    try:
        return _fetch_all(manifest, target_dir, source, include_optional, timeout)
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                target_dir.rmdir()  # only succeeds when empty: leave no trace of a fetch that placed nothing
        raise


def _fetch_all(
    manifest: Manifest, target_dir: Path, source: Path | None, include_optional: bool, timeout: float
) -> list[Path]:
    placed: list[Path] = []
    missing: list[str] = []
    for model_file in manifest.files.values():
        if model_file.optional and not include_optional:
            continue
        final = target_dir / model_file.filename
        if final.is_file():
            try:
                verify_file(final, model_file.checksum)
            except ModelChecksumError as exc:
                logger.warning("%s; fetching it again", exc)
            else:
                logger.info("model %s: %s already present", manifest.name, model_file.filename)
                placed.append(final)
                continue
        try:
            _fetch_one(manifest, model_file, final, source=source, timeout=timeout)
        except _UnavailableError as exc:
            if model_file.optional:
                logger.warning("model %s: optional %s skipped: %s", manifest.name, model_file.role, exc)
                continue
            if source is None:
                raise exc.error from exc.error.__cause__
            missing.append(str(exc))
            continue
        placed.append(final)
    if missing:
        raise ModelMissingError(
            f"model {manifest.name}: {'; '.join(missing)}; put them there, "
            f"or run `edgeguard models fetch {manifest.name}` where the network is reachable"
        )
    return placed


def _fetch_one(manifest: Manifest, model_file: ModelFile, final: Path, *, source: Path | None, timeout: float) -> None:
    # Everything is staged in a hidden folder next to the destination: same filesystem, so the
    # final os.replace is atomic, and one rmtree cleans up whatever happened.
    try:
        staging = Path(tempfile.mkdtemp(dir=final.parent, prefix=".fetch-"))
    except OSError as exc:
        raise SetupError(f"cannot write to {final.parent}: {exc}") from exc
    try:
        if source is not None:
            _from_source(manifest, model_file, final, source, staging)
        else:
            _from_url(manifest, model_file, final, staging, timeout)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _from_source(manifest: Manifest, model_file: ModelFile, final: Path, source: Path, staging: Path) -> None:
    name, filename = manifest.name, model_file.filename
    candidates = [source / name / filename, source / filename]
    if model_file.archive_member:
        candidates.append(source / model_file.archive_member)
    archives: list[Path] = []
    if model_file.archive_member and model_file.url:
        basename = PurePosixPath(urllib.parse.urlsplit(model_file.url).path).name
        archives = [source / name / basename, source / basename]

    first_mismatch: ModelChecksumError | None = None
    for candidate in candidates:
        if not candidate.is_file():
            continue
        staged = staging / filename
        try:
            shutil.copyfile(candidate, staged)
        except OSError as exc:
            raise SetupError(f"cannot copy {candidate} to {final.parent}: {exc}") from exc
        try:
            _place(staged, final, model_file.checksum, origin=candidate)
        except ModelChecksumError as exc:
            # Another model may ship a file of the same name (frozen_inference_graph.pb); try on.
            logger.warning("%s; not this model's file", exc)
            first_mismatch = first_mismatch or exc
            staged.unlink(missing_ok=True)
            continue
        logger.info("model %s: %s copied from %s", name, filename, candidate)
        return
    for archive in archives:
        if not archive.is_file():
            continue
        _verify_archive(archive, model_file.archive_checksum)
        staged = _extract(archive, str(model_file.archive_member), staging)
        _place(staged, final, model_file.checksum, origin=archive)
        logger.info("model %s: %s extracted from %s", name, filename, archive)
        return
    if first_mismatch is not None:
        raise first_mismatch
    looked = [*candidates, *archives]
    raise _UnavailableError(
        ModelMissingError(f"{filename} not found in {source} (looked for {', '.join(str(p) for p in looked)})")
    )


def _from_url(manifest: Manifest, model_file: ModelFile, final: Path, staging: Path, timeout: float) -> None:
    if model_file.url is None:
        raise _UnavailableError(
            ModelMissingError(
                f"model {manifest.name}: {model_file.filename} has no download URL; "
                f"provision it with `edgeguard models fetch {manifest.name} --from DIR`"
            )
        )
    downloaded = _download(model_file.url, staging / "download", manifest.name, timeout)
    if model_file.archive_member:
        _verify_archive(downloaded, model_file.archive_checksum)
        staged = _extract(downloaded, model_file.archive_member, staging)
        downloaded.unlink()
    else:
        staged = downloaded
    _place(staged, final, model_file.checksum, origin=model_file.url)
    logger.info("model %s: %s downloaded", manifest.name, model_file.filename)


def _place(staged: Path, final: Path, checksum: str | None, *, origin: Path | str) -> None:
    """Verify `staged`, flush it to disk and atomically rename it to `final`."""
    if checksum is None:
        logger.warning("%s has no checksum in its manifest; %s is not verified", final.name, origin)
    elif (mismatch := _mismatch(staged, checksum)) is not None:
        raise ModelChecksumError(f"{origin}: checksum mismatch for {final.name}: {mismatch}; refused")
    try:
        # mkstemp/mkdtemp create 0600 files; a daemon running as another user must read them.
        os.chmod(staged, 0o644)
        with staged.open("rb") as stream:
            os.fsync(stream.fileno())
        os.replace(staged, final)
        _fsync_dir(final.parent)
    except OSError as exc:
        raise SetupError(f"cannot write {final}: {exc}") from exc


def _fsync_dir(directory: Path) -> None:
    try:
        fsync_dir(directory)
    except OSError:
        logger.debug("cannot fsync %s", directory)  # not supported everywhere; the rename is still atomic


def _verify_archive(archive: Path, checksum: str | None) -> None:
    if checksum is None:
        logger.warning("%s: no archive checksum; relying on the member's checksum", archive)
        return
    verify_file(archive, checksum)


def _extract(archive: Path, member_name: str, staging: Path) -> Path:
    """Extract one regular-file member into `staging/extract/`; path traversal is refused."""
    into = staging / "extract"
    try:
        with tarfile.open(archive, "r:*") as tar:
            try:
                member = tar.getmember(member_name)
            except KeyError:
                raise SetupError(f"{archive}: no member {member_name!r} in the archive") from None
            if not member.isfile():
                raise SetupError(f"{archive}: member {member_name!r} is not a regular file")
            tar.extract(member, path=into, filter="data")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise SetupError(f"cannot extract {member_name} from {archive}: {exc}") from exc
    return into / member_name


def _user_agent() -> str:
    try:
        version = metadata.version("edgeguard")
    except metadata.PackageNotFoundError:
        version = "dev"
    return f"edgeguard/{version} (model fetch)"


def _download(url: str, dest: Path, name: str, timeout: float) -> Path:
    """Stream `url` to `dest`, logging progress; network failures become one-line SetupErrors."""
    hint = f"provision offline with `edgeguard models fetch {name} --from DIR` or {env.MODEL_SOURCE}"

    def failed(reason: str, exc: BaseException | None = None) -> _UnavailableError:
        error = SetupError(f"cannot download {url}: {reason}; {hint}")
        error.__cause__ = exc
        return _UnavailableError(error)

    request = urllib.request.Request(url, headers={"User-Agent": _user_agent()})
    logger.info("downloading %s", url)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)  # the manifest allows http(s) URLs only
    except urllib.error.HTTPError as exc:
        raise failed(f"HTTP {exc.code} {exc.reason}", exc) from exc
    except urllib.error.URLError as exc:
        raise failed(str(exc.reason), exc) from exc
    except (OSError, http.client.HTTPException) as exc:
        raise failed(str(exc) or type(exc).__name__, exc) from exc

    with response:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        done = 0
        next_report = 0.1
        started = time.monotonic()
        try:
            with dest.open("wb") as out:
                while True:
                    try:
                        chunk = response.read(_CHUNK)
                    except (OSError, http.client.HTTPException) as exc:
                        raise failed(str(exc) or type(exc).__name__, exc) from exc
                    if not chunk:
                        break
                    out.write(chunk)
                    done += len(chunk)
                    if total and done / total >= next_report and done < total:
                        logger.info("%s: %d%% of %.1f MB", url, 100 * done // total, total / 1e6)
                        next_report = (int(10 * done / total) + 1) / 10
        except OSError as exc:  # read errors were turned into SetupError above: this is the disk
            raise SetupError(f"cannot write {dest}: {exc}") from exc
    if total is not None and done != total:
        raise failed(f"incomplete: got {done} of {total} bytes")
    logger.info("%s: %.1f MB in %.1f s", url, done / 1e6, time.monotonic() - started)
    return dest


def _remove_stale_staging(target_dir: Path) -> None:
    """Remove staging folders left by a fetch that was killed (older than a day)."""
    cutoff = time.time() - _STALE_STAGING_SECONDS
    for stale in target_dir.glob(".fetch-*"):
        try:
            if stale.is_dir() and stale.stat().st_mtime < cutoff:
                shutil.rmtree(stale, ignore_errors=True)
        except OSError:
            continue
