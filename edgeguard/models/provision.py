"""Provisioning: put a model's files in `<models_dir>/<name>/`, downloaded or copied `--from` a folder.

Every file is staged in a hidden folder next to its destination (extracted from its tarball if
the manifest says so), verified, and only then renamed into place, so a file in place is always a
verified one.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import os
import shutil
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from importlib import metadata
from pathlib import Path, PurePosixPath

from edgeguard import env
from edgeguard.durable import fsync_dir
from edgeguard.errors import ModelChecksumError, ModelMissingError, SetupError
from edgeguard.models.manifest import Manifest, ModelFile
from edgeguard.models.store import checksum_mismatch, verify_file

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20
_STALE_STAGING_SECONDS = 24 * 3600


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
    elif (mismatch := checksum_mismatch(staged, checksum)) is not None:
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
