"""Model manifests: the schema of `models/<name>.yaml`, and the folders manifests are loaded from.

A manifest names a model's backend, its native input size, free backend parameters and its
files (role -> filename, checksum, url). Every problem of every manifest is reported in one
ConfigError, one line each: `{path}: {key.path}: {message}`.
"""

from __future__ import annotations

import logging
import re
import sys
import urllib.parse
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import Annotated, Any, Self, TypeVar

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails, InitErrorDetails

from edgeguard import yamlfile
from edgeguard.errors import ConfigError
from edgeguard.validation import message, problem, raised, reraised

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "mask_rcnn_inception_v2_coco"

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
CHECKSUM_RE = re.compile(r"^(?:(sha256):([0-9a-fA-F]{64})|(sha1):([0-9a-fA-F]{40}))$")

_M = TypeVar("_M", bound=BaseModel)


# --- field rules ------------------------------------------------------------------------------
# Before-validators with their own messages: pydantic's lax mode would turn "5" into 5 or "yes"
# into True, and its generic messages do not say what a manifest expects.


def _plain_name(rule: str) -> BeforeValidator:
    def check(value: Any) -> Any:
        if not isinstance(value, str) or not _NAME_RE.match(value):
            raise ValueError(f"{rule}, got {value!r}")
        return value

    return BeforeValidator(check)


def _role(key: Any) -> str:
    role = str(key)  # YAML reads a key such as `1:` as an int; the role is its text
    if not _NAME_RE.match(role):
        raise ValueError("a role must be a plain name (letters, digits, _ . -)")
    return role


def _checksum(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, str) and CHECKSUM_RE.match(value):
        return value.lower()
    raise ValueError(f"must be 'sha256:<64 hex>' or 'sha1:<40 hex>', got {value!r}")


def _url(value: Any) -> Any:
    if value is None:
        return None
    parts = urllib.parse.urlsplit(value) if isinstance(value, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"must be an http(s) URL, got {value!r}")
    return value


def _archive_member(value: Any) -> Any:
    if value is None:
        return None
    pure = PurePosixPath(value) if isinstance(value, str) and value else None
    if pure is None or pure.is_absolute() or ".." in pure.parts:
        raise ValueError(f"must be a relative path inside the archive, got {value!r}")
    return value


def _flag(value: Any) -> Any:
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, got {value!r}")
    return value


def _string(value: Any) -> Any:
    if not isinstance(value, str):
        raise ValueError(f"must be a string, got {value!r}")
    return value


def _input_size(value: Any) -> Any:
    if value is None:
        return None
    if (
        isinstance(value, list)
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
    ):
        return tuple(value)
    raise ValueError(f"must be [width, height] of positive integers, got {value!r}")


def _params(value: Any) -> Any:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ValueError("must be a mapping with string keys")
    return value


def _files(value: Any) -> Any:
    if not isinstance(value, dict) or not value:
        raise ValueError("must be a non-empty mapping of role -> file")
    return value


PlainName = Annotated[str, _plain_name("must be a plain name (letters, digits, _ . -)")]
BackendKey = Annotated[str, _plain_name("must be a backend type key such as 'maskrcnn' or 'yolox'")]
# A bare name: it is joined to the model's folder and must not escape it.
FileName = Annotated[str, _plain_name("must be a bare file name")]
Role = Annotated[str, BeforeValidator(_role)]
Checksum = Annotated[str | None, BeforeValidator(_checksum)]


# --- the schema -------------------------------------------------------------------------------


class ModelFile(BaseModel):
    """One `files.<role>` entry: a file the model needs and where to get it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    filename: FileName
    checksum: Checksum = None  # "sha256:<hex>" or "sha1:<hex>", lower-cased
    url: Annotated[str | None, BeforeValidator(_url)] = None
    archive_member: Annotated[str | None, BeforeValidator(_archive_member)] = None  # path inside the .tar.gz at `url`
    archive_checksum: Checksum = None
    optional: Annotated[bool, BeforeValidator(_flag)] = False

    # Not a YAML key: the key under `files:`, set by Manifest once the entry is valid.
    _role: str = PrivateAttr(default="")

    @property
    def role(self) -> str:
        return self._role

    @model_validator(mode="wrap")
    @classmethod
    def _check_together(cls, data: Any, handler: ModelWrapValidatorHandler[Self]) -> Self:
        if not isinstance(data, dict):
            raise ValueError(f"must be a mapping with at least 'filename', got {data!r}")
        problems: list[InitErrorDetails] = []
        member = data.get("archive_member")
        if member is not None and data.get("url") is None:
            problems.append(problem("archive_member", member, "needs 'url' (the archive)"))
        if (archive_checksum := data.get("archive_checksum")) is not None and member is None:
            problems.append(problem("archive_checksum", archive_checksum, "only applies with 'archive_member'"))
        model_file, errors = _attempt(handler, data)
        if model_file is None or problems:
            raise _merged(cls.__name__, errors, problems)
        return model_file


class Manifest(BaseModel):
    """A model: its backend, native input size, backend parameters and files by role.

    Validate with `context={"path": <the YAML file>}`: the name must match the file's stem, and
    `path` is that file.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: PlainName
    backend: BackendKey
    description: Annotated[str, BeforeValidator(_string), AfterValidator(str.strip)] = ""
    input_size: Annotated[tuple[int, int] | None, BeforeValidator(_input_size)] = None  # (w, h)
    labels: str | None = None  # role of the labels file
    params: Annotated[Mapping[str, Any], BeforeValidator(_params), AfterValidator(MappingProxyType)] = Field(
        default_factory=lambda: MappingProxyType({})
    )
    files: Annotated[Mapping[Role, ModelFile], BeforeValidator(_files), AfterValidator(MappingProxyType)]

    # Not a YAML key: the file the manifest was read from.
    _path: Path = PrivateAttr()

    @property
    def path(self) -> Path:
        return self._path

    @field_validator("name")
    @classmethod
    def _name_is_the_file_name(cls, name: str, info: ValidationInfo) -> str:
        path = _source(info)
        # The name is the folder the files go to and what users type; one name, one file.
        if path is not None and name != path.stem:
            raise ValueError(f"{name!r} must match the file name {path.stem!r}")
        return name

    @model_validator(mode="wrap")
    @classmethod
    def _check_together(cls, data: Any, handler: ModelWrapValidatorHandler[Self], info: ValidationInfo) -> Self:
        if not isinstance(data, dict):
            raise ValueError(f"must be a mapping, got {type(data).__name__}")
        problems: list[InitErrorDetails] = []
        raw_files = data.get("files")
        roles: dict[Any, Any] = raw_files if isinstance(raw_files, dict) else {}
        labels = data.get("labels")
        if labels is not None and (not isinstance(labels, str) or labels not in roles):
            listed = ", ".join(map(str, roles))
            problems.append(problem("labels", labels, f"must name a role under files ({listed}), got {labels!r}"))
            data = {key: value for key, value in data.items() if key != "labels"}  # reported once, here

        manifest, errors = _attempt(handler, data)
        invalid = {e["loc"][1] for e in errors if len(e["loc"]) > 1 and e["loc"][0] == "files"}
        problems += _shared_filenames(roles, invalid)
        if manifest is None or problems:
            raise _merged(cls.__name__, errors, problems)
        path = _source(info)
        if path is not None:
            manifest._path = path
        for role, model_file in manifest.files.items():
            model_file._role = role
        return manifest


def _source(info: ValidationInfo) -> Path | None:
    context = info.context
    path = context.get("path") if isinstance(context, dict) else None
    return path if isinstance(path, Path) else None


def _shared_filenames(raw_files: Mapping[Any, Any], invalid: set[Any]) -> list[InitErrorDetails]:
    """Two roles with one filename, among the entries valid on their own (`invalid`: the others)."""
    problems: list[InitErrorDetails] = []
    seen: dict[str, str] = {}
    for role, spec in raw_files.items():
        if role in invalid:
            continue
        filename = spec["filename"]
        if filename in seen:
            message = f"{filename!r} is also the file of role {seen[filename]!r}"
            problems.append(problem(("files", role, "filename"), filename, message))
        seen[filename] = str(role)
    return problems


def _attempt(handler: ModelWrapValidatorHandler[_M], data: Any) -> tuple[_M | None, list[ErrorDetails]]:
    try:
        return handler(data), []
    except ValidationError as exc:
        return None, exc.errors()


def _merged(title: str, errors: list[ErrorDetails], problems: list[InitErrorDetails]) -> ValidationError:
    """One error with pydantic's own and the cross-field `problems`, so that all are reported at once.

    Raised in a validator, its locations are kept and prefixed with where that validator runs
    (pydantic-core supports this), so an entry reports `files.<role>.<key>`.
    """
    return raised(title, [*reraised(errors), *problems])


# --- loading ----------------------------------------------------------------------------------


def builtin_manifest_dir() -> Path:
    """The manifests shipped with edgeguard: the source tree's `models/`, else the installed copy."""
    repo = Path(__file__).resolve().parents[2] / "models"
    # Checked by the default manifest, not by the folder alone: an installed package's parent is
    # site-packages, where some other distribution may have dropped a `models/` folder.
    if (repo / f"{DEFAULT_MODEL}.yaml").is_file():
        return repo
    share = Path(sys.prefix) / "share" / "edgeguard" / "models"
    return share if share.is_dir() else repo


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
            manifest, file_problems = _read(path)
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


def _read(path: Path) -> tuple[Manifest | None, list[str]]:
    """The manifest in `path`, or None and its problems, one line each."""
    try:
        data = yamlfile.load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        return None, [f"{path}: cannot read: {exc}"]
    except yaml.YAMLError as exc:
        return None, [f"{path}: invalid YAML: {' '.join(str(exc).split())}"]
    try:
        return Manifest.model_validate(data, context={"path": path}), []
    except ValidationError as exc:
        return None, [f"{path}: {_describe(error)}" for error in exc.errors()]


def _describe(error: ErrorDetails) -> str:
    """`key.path: message` for one of pydantic's errors, in the words manifests have always used."""
    loc = error["loc"]
    # pydantic marks a bad mapping key with "[key]"; under files that key is a role.
    key = ".".join("(role)" if part == "[key]" else str(part) for part in loc) or "(top)"
    if error["type"] in ("extra_forbidden", "invalid_key"):  # invalid_key: a key that is not a string
        model: type[BaseModel] = ModelFile if loc[:1] == ("files",) else Manifest
        return f"{key}: unknown key (allowed: {', '.join(sorted(model.model_fields))})"
    return f"{key}: {message(error)}"
