"""Where a model's files live (`<models_dir>/<name>/<filename>`) and whether they are the right ones."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

from edgeguard.errors import ConfigError, ModelChecksumError, ModelMissingError, SetupError
from edgeguard.models.manifest import CHECKSUM_RE, Manifest


def file_path(manifest: Manifest, role: str, models_dir: Path) -> Path:
    try:
        model_file = manifest.files[role]
    except KeyError:
        roles = ", ".join(manifest.files)
        raise ConfigError([f"model {manifest.name}: no file role {role!r} (roles: {roles})"]) from None
    return models_dir / manifest.name / model_file.filename


def digest(path: Path, algorithm: str = "sha256") -> str:
    # SHA-1 is what upstream publishes for some files; flag it so FIPS builds still allow it.
    secure = algorithm != "sha1"
    with path.open("rb") as stream:
        return hashlib.file_digest(stream, lambda: hashlib.new(algorithm, usedforsecurity=secure)).hexdigest()


def checksum_mismatch(path: Path, checksum: str) -> str | None:
    """None if `path` has `checksum`, else "expected <checksum>, got <actual>"."""
    match = CHECKSUM_RE.match(checksum)
    if match is None:
        raise ConfigError([f"bad checksum {checksum!r}: must be 'sha256:<hex>' or 'sha1:<hex>'"])
    algorithm = match.group(1) or match.group(3)
    expected = (match.group(2) or match.group(4)).lower()
    try:
        actual = digest(path, algorithm)
    except OSError as exc:
        raise SetupError(f"{path}: cannot read: {exc}") from exc
    if actual == expected:
        return None
    return f"expected {algorithm}:{expected}, got {algorithm}:{actual}"


def verify_file(path: Path, checksum: str | None) -> None:
    """Raise ModelMissingError if `path` is not a file, ModelChecksumError if its digest differs."""
    if not path.is_file():
        raise ModelMissingError(f"{path}: not found")
    if checksum is not None and (mismatch := checksum_mismatch(path, checksum)) is not None:
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
