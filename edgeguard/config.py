"""The configuration tree: one YAML file, validated once at the edge.

Every key is declared here with its default; unknown keys are errors. Problems
are reported one per line as ``FILE:LINE: key.path: message`` so an operator
can go straight to the line.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Self, TypeVar

import yaml
from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    PlainSerializer,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails, InitErrorDetails

from edgeguard import env, styles, yamlfile
from edgeguard.detectors import registry
from edgeguard.errors import ConfigError
from edgeguard.media.kinds import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS
from edgeguard.seal import read_recipients
from edgeguard.settings import DetectorSettings, PluginOptions, ProtectSettings, Section
from edgeguard.validation import message, problem, raised, reraised

OptionsT = TypeVar("OptionsT", bound=PluginOptions)


class DetectorConfig(DetectorSettings):
    """`detector`: the shared keys, and each plugin's own under `detector.<type key>`.

    The plugin comes from the model's manifest (`backend`); the sections of every registered
    plugin are validated, so a key misspelt for a plugin not in use is still caught.
    """

    # Unknown keys are refused by `_plugin_sections`; "allow" only lets the sections through.
    model_config = ConfigDict(extra="allow", frozen=True)

    @model_validator(mode="wrap")
    @classmethod
    def _plugin_sections(cls, data: Any, handler: ModelWrapValidatorHandler[Self]) -> Self:
        """Validate each plugin's section with the plugin's own model; refuse any other unknown key."""
        if not isinstance(data, dict):
            return handler(data)
        sections = registry.options_models()
        errors: list[InitErrorDetails] = []
        options: dict[str, PluginOptions] = {}
        for key, model in sections.items():
            try:
                section = data.get(key)
                options[key] = model.model_validate({} if section is None else section)
            except ValidationError as exc:
                errors += reraised(exc.errors(), (key,))
        for key in data.keys() - cls.model_fields.keys() - sections.keys():
            moved = [k for k, m in sections.items() if key in m.model_fields]
            if moved:
                errors.append(problem(key, data[key], f"moved to detector.{moved[0]}.{key}"))
            else:
                errors.append(InitErrorDetails(type="extra_forbidden", loc=(str(key),), input=data[key]))
        own = {k: v for k, v in data.items() if k in cls.model_fields}
        try:
            config = handler(own)
        except ValidationError as exc:
            errors = reraised(exc.errors()) + errors
        if errors:
            raise raised(cls.__name__, errors)
        assert config.__pydantic_extra__ is not None
        config.__pydantic_extra__.update(options)
        return config

    def options(self, key: str, model: type[OptionsT]) -> OptionsT:
        """Plugin `key`'s validated section (its defaults for a plugin registered after this was read)."""
        found = (self.__pydantic_extra__ or {}).get(key)
        return found if isinstance(found, model) else model()


class ProtectConfig(ProtectSettings):
    """`protect`, with the style checked against the registered styles."""

    @field_validator("style")
    @classmethod
    def _known_style(cls, v: str) -> str:
        if v not in styles.names():
            raise ValueError(f"{v!r} is not a hiding style: {', '.join(styles.names())}")
        return v


class VideoConfig(Section):
    crf: Annotated[int, Field(ge=0, le=51)] = 23
    preset: Literal["ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow"] = (
        "veryfast"
    )
    audio: Literal["keep", "strip"] = "keep"
    keep_metadata: bool = False


class TemporalConfig(Section):
    """Detect on keyframes and carry each instance between them along its own motion."""

    # Detect at least every this many frames; 1 = every frame (the seed's loop).
    keyframe_interval: Annotated[int, Field(ge=1, le=300)] = 16
    # Force a fresh detection when something changes that the tracked instances do not explain.
    motion_check: bool = True
    # Grey-level change (1..255) that counts as motion.
    motion_threshold: Annotated[int, Field(ge=1, le=255)] = 25
    # Share of the frame that may change unexplained before a fresh detection.
    motion_min_area: Annotated[float, Field(ge=0, le=1)] = 0.002
    # Pixels added around every carried instance, on top of its measured margin (a share of its
    # height that grows with the distance to the keyframes that saw it, rounded up to whole
    # pixels; see carry.Margins).
    margin: Annotated[float, Field(ge=0, le=512)] = 0.0
    # Multiplies the measured margins: below 1 hides less around carried instances and
    # leaves more of them uncovered (measure with `make bench`).
    margin_scale: Annotated[float, Field(ge=0, le=10)] = 1.0
    # Multiplies the measured margins across (x) and up and down (y): a walker's box swings
    # wider with each stride than it grows taller (`python -m bench.calibrate`).
    margin_xy: tuple[Annotated[float, Field(ge=0, le=10)], Annotated[float, Field(ge=0, le=10)]] = (1.3, 0.8)
    # Share of an instance's height around it where the motion check also expects change
    # (shadows, swinging bags); what it hides is not widened by this.
    motion_slack: Annotated[float, Field(ge=0, le=4)] = 0.25
    # Keyframes look harder: they keep detections down to this score (never above
    # detector.confidence), since their instances stand in for the frames around them.
    keyframe_confidence: Annotated[float, Field(ge=0, le=1)] = 0.15
    # Keyframes also look at the mirrored frame: always | never | auto (the detector plugin's
    # choice: never for the shipped models, whose mirrored look costs more than it finds).
    keyframe_mirror: Literal["auto", "always", "never"] = "auto"

    @field_validator("margin_xy", mode="before")
    @classmethod
    def _two(cls, value: Any) -> Any:
        if not isinstance(value, list | tuple) or len(value) != 2:
            raise ValueError(f"expected [across, up_down], two numbers such as [1.3, 0.8], not {value!r}")
        return value

    @model_validator(mode="before")
    @classmethod
    def _retired(cls, data: Any) -> Any:
        if isinstance(data, dict) and "grow" in data:
            raise ValueError(
                "'grow' was retired: carried instances now follow their own motion, with margins "
                "measured from tracking error (tune them with margin and margin_scale)"
            )
        return data


class MediaConfig(Section):
    # Refuse frames larger than this before decoding them (decompression bombs).
    max_pixels: Annotated[int, Field(ge=1)] = 8192 * 8192
    # Refuse inputs whose one decoded frame takes more memory than this (MiB), at the file's own
    # sample depth: a 16-bit RGBA PNG takes 8 bytes per pixel, a video frame 3 (6 above 8 bits).
    max_frame_mb: Annotated[int, Field(ge=1)] = 256
    # Refuse videos of more frames than this (2 h at 30 fps): a flood of tiny frames costs
    # per-frame work however small they are. Checked from the header and while decoding.
    max_frames: Annotated[int, Field(ge=1)] = 216_000
    image_quality: Annotated[int, Field(ge=1, le=100)] = 95


class ModelsConfig(Section):
    dir: Path = Path("models")
    # Extra folders searched for manifests before the built-in ones.
    manifests: list[Path] = Field(default_factory=list)


def _octal(value: object) -> object:
    """A mode as YAML gives it: 0640 (YAML's octal, an int) or a string "0640" / "0o640"."""
    if isinstance(value, bool):
        raise ValueError(f"{value} is not an octal mode such as 0640")
    if isinstance(value, str):
        try:
            return int(value.strip().lower().removeprefix("0o"), 8)
        except ValueError:
            raise ValueError(f"{value!r} is not an octal mode such as 0640") from None
    return value


def _permission(kind: str, owner: int) -> Callable[[int], int]:
    def check(value: int) -> int:
        if not 0 <= value <= 0o777:
            # 640 without its leading 0 is YAML's decimal 640 (0o1200): almost surely a slip.
            raise ValueError(f"{value} is not a permission mode: write it in octal with a leading 0, e.g. 0640")
        if value & owner != owner:
            raise ValueError(f"{value:04o} must give the daemon's own user {owner:04o} on its {kind}")
        if value & 0o002:
            raise ValueError(f"{value:04o} lets every user write the daemon's {kind}")
        return value

    return check


def _as_octal(value: int) -> str:
    return f"{value:04o}"


FileMode = Annotated[
    int, BeforeValidator(_octal), AfterValidator(_permission("files", 0o600)), PlainSerializer(_as_octal)
]
FolderMode = Annotated[
    int, BeforeValidator(_octal), AfterValidator(_permission("folders", 0o700)), PlainSerializer(_as_octal)
]


class ModesConfig(Section):
    # Modes of every file and folder the daemon creates (outputs, sealed originals, records, the
    # ledger; originals it keeps, where it owns them), whatever its umask. Octal, with the leading 0.
    # work and state are always 0700: they hold originals in the clear and the ledger.
    files: FileMode = 0o640
    folders: FolderMode = 0o750


class PathsConfig(Section):
    incoming: Path = Path("nextbatchRun")
    output: Path = Path("output")
    quarantine: Path = Path("quarantine")
    failed: Path = Path("failed")
    # Originals kept with `originals: keep` move here so they are not taken again.
    processed: Path = Path("processed")
    # Claimed inputs and partial outputs; must share a filesystem with incoming and output.
    work: Path = Path("work")
    # Folder of the SQLite ledger.
    state: Path = Path("state")
    # Sealed originals (daemon.originals: seal): NAME.age and its record NAME.age.json.
    sealed: Path = Path("sealed")
    mode: ModesConfig = ModesConfig()

    FOLDERS: ClassVar[tuple[str, ...]] = (
        "incoming",
        "output",
        "quarantine",
        "failed",
        "processed",
        "work",
        "state",
        "sealed",
    )

    def folders(self) -> dict[str, Path]:
        """Every folder key and its path (`mode` is not a folder)."""
        return {key: getattr(self, key) for key in self.FOLDERS}


# From the one list of media extensions, so the daemon takes every file `edgeguard protect` does.
VIDEO_PATTERNS = [f"*{ext}" for ext in sorted(VIDEO_EXTENSIONS)]
IMAGE_PATTERNS = [f"*{ext}" for ext in sorted(IMAGE_EXTENSIONS)]


class WatchConfig(Section):
    # A file is taken once its size and mtime have not changed for this long.
    settle_seconds: Annotated[float, Field(ge=0, le=3600)] = 2.0
    # A video cut short (its index promises more frames than its data holds) is left in
    # incoming this long after its last change, for its writer to finish; then it is failed.
    incomplete_seconds: Annotated[float, Field(ge=0, le=86400)] = 300.0
    # Full rescan of the incoming folder (inotify can overflow; cross-filesystem moves give no close event).
    rescan_seconds: Annotated[float, Field(gt=0, le=86400)] = 30.0
    # Names to take / to ignore (shell patterns, case-insensitive; ignore wins).
    patterns: list[str] = Field(default_factory=lambda: VIDEO_PATTERNS + IMAGE_PATTERNS, min_length=1)
    ignore: list[str] = Field(default_factory=lambda: [".*", "*.part", "*.tmp", "*.crdownload", "*~"])


class DaemonConfig(Section):
    # What becomes of an original once its protected output is durable: delete | quarantine
    # (moved to paths.quarantine) | keep (moved to paths.processed) | seal (encrypted to the
    # seal.recipients into paths.sealed; the plaintext is deleted once the sealed file is durable).
    originals: Literal["delete", "quarantine", "keep", "seal"] = "delete"
    # Seal the originals of failed files too (NAME.age in paths.failed, beside NAME.age.error.json).
    seal_failed: bool = False
    # A file that crashed or hung the daemon this many times is sent to failed (poison file).
    max_attempts: Annotated[int, Field(ge=1, le=100)] = 3
    # Per-file time limit in seconds (0 = none).
    file_timeout: Annotated[float, Field(ge=0)] = 3600.0
    # On SIGTERM, finish the current file within this many seconds, else roll it back.
    stop_grace: Annotated[float, Field(ge=0, le=3600)] = 20.0
    # Pause claiming while the output filesystem has less free space than this
    # plus the estimated output (input size times output_ratio).
    min_free_mb: Annotated[int, Field(ge=0)] = 512
    output_ratio: Annotated[float, Field(gt=0, le=100)] = 2.0
    # How often to look again while paused for disk space.
    pause_seconds: Annotated[float, Field(gt=0, le=3600)] = 30.0


class LoggingConfig(Section):
    level: Literal["debug", "info", "warning", "error"] = "info"


class MetricsConfig(Section):
    # Folder for edgeguard.prom, the daemon's metrics in Prometheus' text format, rewritten at
    # most once a second (node_exporter's textfile collector reads it); unset = no metrics.
    folder: Path | None = None


class AuditConfig(Section):
    # Besides the ledger, write each output's audit record beside it as OUTPUT.audit.json.
    sidecar: bool = False


def _recipient_entry(entry: str) -> str:
    read_recipients([entry])  # ValueError says what is wrong with it
    return entry


class SealConfig(Section):
    # age X25519 public keys (age1...) of whoever may open sealed originals, or files of them
    # (one per line, # comments). Only public keys: the gateway can seal, never unseal.
    recipients: list[Annotated[str, AfterValidator(_recipient_entry)]] = Field(default_factory=list)

    def keys(self) -> list[str]:
        """The public keys, files read now (a file may have changed since the config was checked)."""
        return read_recipients(self.recipients)


def _address(value: str) -> str:
    value = value.strip()
    if not value:
        return value
    if value.startswith("ray://"):
        raise ValueError("Ray Client (ray://) is not supported: give the head's HOST:PORT (this machine is a node)")
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{value!r} is not HOST:PORT of the Ray head (e.g. 10.0.0.5:6379)")
    return value


def _readable(value: Path | None) -> Path | None:
    if value is not None and not value.is_file():
        raise ValueError(f"{value} is not a readable file")
    return value


ClusterFile = Annotated[Path | None, AfterValidator(_readable)]


class ClusterTLSConfig(Section):
    # Ray's mutual TLS (RAY_USE_TLS): the CA that signed every node's certificate, and this machine's
    # certificate and key. All three or none; every node of the cluster must use TLS as well.
    ca: ClusterFile = None
    cert: ClusterFile = None
    key: ClusterFile = None

    @model_validator(mode="after")
    def _all_or_none(self) -> Self:
        given = [k for k in ("ca", "cert", "key") if getattr(self, k) is not None]
        if given and len(given) != 3:
            missing = sorted({"ca", "cert", "key"} - set(given))
            raise raised("ClusterTLSConfig", [problem(missing[0], None, "TLS needs ca, cert and key together")])
        return self

    @property
    def on(self) -> bool:
        return self.ca is not None


class ClusterConfig(Section):
    # HOST:PORT of the Ray head (its GCS port, 6379 by default); empty = protect on this machine.
    # This machine must be a node of that cluster (`ray start`): see README, "Running on a cluster".
    address: Annotated[str, AfterValidator(_address)] = ""
    # prefer: protect on this machine while the cluster is unreachable; only: wait for it (paused).
    mode: Literal["prefer", "only"] = "prefer"
    # Actors (each holds the model loaded) per node, and the CPUs each reserves there.
    actors_per_node: Annotated[int, Field(ge=1, le=64)] = 1
    actor_cpus: Annotated[float, Field(gt=0, le=256)] = 1.0
    # Cut a video at the first keyframe after every this many seconds (when that makes two pieces or
    # more) and protect the pieces in parallel; 0 = never cut.
    segment_seconds: Annotated[float, Field(ge=0)] = 10.0
    # Seconds to reach the head; seconds without any word from the driver (it speaks at least every
    # half second while it and the actors work), or for a new actor to load the model.
    connect_timeout: Annotated[float, Field(gt=0, le=600)] = 10.0
    silence_timeout: Annotated[float, Field(gt=0, le=3600)] = 120.0
    # Seconds an actor may work on a piece without handing on a frame before it is taken for hung
    # (a stuck decoder, a stopped process): it is killed and the piece sent to another (counted as a
    # failure of the piece). 0 = never; the daemon's file_timeout still ends the file.
    stall_timeout: Annotated[float, Field(ge=0, le=86400)] = 300.0
    # After the cluster was unreachable (mode prefer), protect here this long before trying it again;
    # a node whose actors could not start (or whose disk was full) is left alone as long.
    retry_seconds: Annotated[float, Field(ge=0, le=86400)] = 30.0
    # Where each node keeps the model files it received (checked by sha256 before every load);
    # empty = the node's temporary folder.
    node_cache: str = ""
    # Ray's token authentication: a file holding the cluster's token (RAY_AUTH_MODE=token).
    token_file: ClusterFile = None
    tls: ClusterTLSConfig = ClusterTLSConfig()

    @property
    def on(self) -> bool:
        return bool(self.address)


class Config(Section):
    # A factory: the default validates plugin sections, so it needs the plugins importable first.
    detector: DetectorConfig = Field(default_factory=DetectorConfig)
    protect: ProtectConfig = ProtectConfig()
    video: VideoConfig = VideoConfig()
    temporal: TemporalConfig = TemporalConfig()
    media: MediaConfig = MediaConfig()
    models: ModelsConfig = ModelsConfig()
    paths: PathsConfig = PathsConfig()
    watch: WatchConfig = WatchConfig()
    daemon: DaemonConfig = DaemonConfig()
    logging: LoggingConfig = LoggingConfig()
    metrics: MetricsConfig = MetricsConfig()
    audit: AuditConfig = AuditConfig()
    seal: SealConfig = SealConfig()
    cluster: ClusterConfig = ClusterConfig()

    @model_validator(mode="after")
    def _sealing_has_recipients(self) -> Self:
        asked = {"originals": self.daemon.originals == "seal", "seal_failed": self.daemon.seal_failed}
        keys = [key for key, on in asked.items() if on]
        if keys and not self.seal.recipients:
            value = getattr(self.daemon, keys[0])
            why = "sealing needs seal.recipients (age public keys of whoever may open the originals)"
            raise raised("Config", [problem(("daemon", keys[0]), value, why)])
        return self

    def models_dir(self) -> Path:
        return env.path(env.MODELS_DIR) or self.models.dir


# ---------------------------------------------------------------- loading


def _line_index(text: str) -> dict[tuple[str | int, ...], int]:
    """Map every key path in a YAML document to its 1-based line."""
    lines: dict[tuple[str | int, ...], int] = {}

    def walk(node: yaml.Node, path: tuple[str | int, ...]) -> None:
        lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                sub = (*path, str(key.value))
                lines[sub] = key.start_mark.line + 1
                walk(value, sub)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, (*path, i))

    root = yaml.compose(text, Loader=yaml.SafeLoader)
    if root is not None:
        walk(root, ())
    return lines


def _merge(base: dict[str, Any], path: Sequence[str], value: Any) -> None:
    node = base
    for key in path[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = {}
            node[key] = child
        node = child
    node[path[-1]] = value


def parse_set(items: Sequence[str]) -> list[tuple[str, Any]]:
    """Parse ``--set key.path=YAML`` items."""
    out: list[tuple[str, Any]] = []
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip() or any(not p for p in key.strip().split(".")):
            raise ConfigError([f"--set {item}: expected KEY=VALUE with a dotted key"])
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            raise ConfigError([f"--set {key}: value is not valid YAML: {' '.join(str(exc).split())}"]) from exc
        out.append((key.strip(), value))
    return out


def _describe(error: ErrorDetails) -> str:
    path = ".".join(str(p) for p in error["loc"])
    return f"{path}: {'unknown key' if error['type'] == 'extra_forbidden' else message(error)}"


def load_config(path: Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """Read, merge and validate; raise ConfigError with one line per problem."""
    data: dict[str, Any] = {}
    lines: dict[tuple[str | int, ...], int] = {}
    name = "<defaults>"
    if path is not None:
        name = str(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from exc
        try:
            loaded = yamlfile.load(text)
            lines = _line_index(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
            problem = getattr(exc, "problem", None) or str(exc)
            raise ConfigError([f"{where}: invalid YAML: {problem}"]) from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError([f"{path}:1: the top level must be a mapping of sections"])
        data = loaded
    set_keys: dict[tuple[str, ...], str] = {}
    for key, value in parse_set(overrides):
        parts = tuple(key.split("."))
        _merge(data, parts, value)
        set_keys[parts] = key
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = tuple(err["loc"])
            text_ = _describe(err)
            # An error at or under a --set key, or above it (an unknown section it created).
            origin = next((k for k in set_keys if loc[: len(k)] == k or k[: len(loc)] == loc), None)
            if origin is not None:
                problems.append(f"--set {text_}")
                continue
            line = next((lines[loc[:n]] for n in range(len(loc), 0, -1) if loc[:n] in lines), None)
            problems.append(f"{name}:{line}: {text_}" if line else f"{name}: {text_}")
        raise ConfigError(problems) from exc


def dump_defaults() -> Mapping[str, Any]:
    return Config().model_dump(mode="json")
