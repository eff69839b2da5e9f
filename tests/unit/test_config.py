"""Configuration: `check-config`, FILE:LINE errors, --set, and the shipped config file."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from edgeguard.config import Config, dump_defaults, load_config
from edgeguard.errors import ConfigError
from tests.conftest import REPO
from tests.support.cli import cli, error_lines

SHIPPED = REPO / "config" / "edgeguard.yaml"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EDGEGUARD_CONFIG", raising=False)


def write(tmp_path: Path, text: str, name: str = "edgeguard.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def model_keys(model: type[BaseModel], prefix: str = "") -> Iterator[str]:
    """Every dotted key of a pydantic model tree."""
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        yield key
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            yield from model_keys(ann, key + ".")


def yaml_keys(node: Any, prefix: str = "") -> Iterator[str]:
    if isinstance(node, dict):
        for name, value in node.items():
            key = f"{prefix}{name}"
            yield key
            yield from yaml_keys(value, key + ".")


# ------------------------------------------------------------------ check-config


def test_a_key_given_twice_is_an_error_naming_both_lines(tmp_path: Path) -> None:
    """PyYAML would keep the last `detector:` and silently drop the first."""
    path = write(tmp_path, "detector:\n  confidence: 0.5\nprotect:\n  style: fill\ndetector:\n  nms: 0.3\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert err.value.problems == [f"{path}:5: invalid YAML: duplicate key 'detector' (first on line 1)"]
    path = write(tmp_path, "protect:\n  style: fill\n  dilate: 4\n  style: blur\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert err.value.problems == [f"{path}:4: invalid YAML: duplicate key 'style' (first on line 2)"]


def test_valid_file_checks_ok(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "detector:\n  model: yolox_nano\n  confidence: 0.6\nprotect:\n  style: fill\n")
    code, out, err = cli(capsys, "check-config", "-c", path)
    assert code == 0, err
    assert out.strip().splitlines()[-1] == f"{path}: ok"
    cfg = load_config(path)
    assert (cfg.detector.model, cfg.detector.confidence, cfg.protect.style) == ("yolox_nano", 0.6, "fill")


def test_out_of_range_value_reports_file_and_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = "# my camera\n\ndetector:\n  model: yolox_nano\n  # be strict\n  confidence: 1.5\n"
    path = write(tmp_path, text)
    line_no = text.splitlines().index("  confidence: 1.5") + 1
    code, out, err = cli(capsys, "check-config", "-c", path)
    assert code == 2
    assert out == ""
    assert err.splitlines() == [
        f"edgeguard: {path}:{line_no}: detector.confidence: Input should be less than or equal to 1"
    ]


def test_every_problem_gets_its_own_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = (
        "detector:\n"  # 1
        "  modle: yolox_nano\n"  # 2
        "  classes: [person, person]\n"  # 3
        "protect:\n"  # 4
        "  blur_kernel: 50\n"  # 5
        "  color: [0, 0, 300]\n"  # 6
        "video:\n"  # 7
        "  preset: warp\n"  # 8
        "telemetry: true\n"  # 9
    )
    path = write(tmp_path, text)
    code, _, err = cli(capsys, "check-config", "-c", path)
    assert code == 2
    lines = set(error_lines(err))
    assert len(lines) == len(err.splitlines()) == 6, err
    expected = {
        f"{path}:2: detector.modle: unknown key",
        f"{path}:3: detector.classes: classes must not repeat",
        f"{path}:5: protect.blur_kernel: must be odd",
        f"{path}:8: video.preset: Input should be ",
        f"{path}:9: telemetry: unknown key",
    }
    for want in expected:
        assert any(line.startswith(f"edgeguard: {want}") for line in lines), (want, lines)
    # A list item points at its own line and names its index.
    assert any(line.startswith(f"edgeguard: {path}:6: protect.color.2: ") for line in lines), lines


def test_yaml_syntax_error_reports_its_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "detector:\n  model: yolox_nano\n  classes: [person\nprotect:\n  style: fill\n")
    code, _, err = cli(capsys, "check-config", "-c", path)
    assert code == 2
    (line,) = err.splitlines()
    assert re.match(rf"edgeguard: {re.escape(str(path))}:\d+: invalid YAML: ", line), line


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- detector\n- protect\n", ":1: the top level must be a mapping of sections"),
        ("detector: 7\n", ":1: detector: "),
    ],
)
def test_wrong_shapes(text: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, text)
    code, _, err = cli(capsys, "check-config", "-c", path)
    assert code == 2
    (line,) = err.splitlines()
    assert line.startswith(f"edgeguard: {path}{message}"), line


def test_empty_file_means_defaults(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "# nothing set\n")
    assert cli(capsys, "check-config", "-c", path)[0] == 0
    assert load_config(path) == Config()


def test_missing_file_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(capsys, "check-config", "-c", tmp_path / "nope.yaml")
    assert code == 2
    (line,) = err.splitlines()
    assert "nope.yaml: cannot read" in line


def test_config_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, "protect:\n  dilate: -1\n")
    monkeypatch.setenv("EDGEGUARD_CONFIG", str(path))
    code, _, err = cli(capsys, "check-config")
    assert code == 2
    assert err.splitlines() == [f"edgeguard: {path}:2: protect.dilate: Input should be greater than or equal to 0"]


# ------------------------------------------------------------------ --set


def test_set_overrides_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "protect:\n  style: blur\n  color: [1, 2, 3]\n")
    cfg = load_config(path, ["protect.style=fill", "protect.color=[255, 0, 255]", "detector.classes=[person, face]"])
    assert cfg.protect.style == "fill"
    assert cfg.protect.color == (255, 0, 255)
    assert cfg.detector.classes == ["person", "face"]


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("detector.confidence=1.5", "--set detector.confidence: Input should be less than or equal to 1"),
        ("detector.modle=yolox_nano", "--set detector.modle: unknown key"),
        ("protect.blur_kernel=8", "--set protect.blur_kernel: must be odd"),
        (
            "temporal.margin_xy=[1.3]",
            "--set temporal.margin_xy: expected [across, up_down], two numbers such as [1.3, 0.8], not [1.3]",
        ),
        ("temporal.margin_xy=[1.3,-1]", "--set temporal.margin_xy.1: Input should be greater than or equal to 0"),
        ("=3", "--set =3: expected KEY=VALUE with a dotted key"),
        ("detector..model=x", "--set detector..model=x: expected KEY=VALUE with a dotted key"),
    ],
)
def test_set_errors_name_the_set_key(item: str, message: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(capsys, "check-config", "--set", item)
    assert code == 2
    assert err.splitlines() == [f"edgeguard: {message}"]


def test_set_error_beats_a_file_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "detector:\n  confidence: 0.5\n")
    code, _, err = cli(capsys, "check-config", "-c", path, "--set", "detector.confidence=7")
    assert code == 2
    assert err.splitlines() == ["edgeguard: --set detector.confidence: Input should be less than or equal to 1"]


def test_set_unknown_section_names_the_set_key(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(capsys, "check-config", "--set", "telemetry.enabled=true")
    assert code == 2
    (line,) = err.splitlines()
    assert line.startswith("edgeguard: --set telemetry"), line


def test_set_invalid_yaml_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(capsys, "check-config", "--set", "detector.classes=[person")
    assert code == 2
    (line,) = err.splitlines()
    assert line.startswith("edgeguard: --set detector.classes: value is not valid YAML")


def test_load_config_raises_config_error_with_problems() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, ["detector.nms=2", "video.crf=99"])
    assert sorted(info.value.problems) == [
        "--set detector.nms: Input should be less than or equal to 1",
        "--set video.crf: Input should be less than or equal to 51",
    ]
    assert info.value.exit_code == 2


def test_a_retired_key_says_what_replaced_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "old.yaml"
    cfg.write_text("temporal:\n  grow: 40\n", encoding="utf-8")
    code, _, err = cli(capsys, "check-config", "-c", str(cfg))
    assert code == 2
    assert f"{cfg}:1: temporal: 'grow' was retired" in err and "margin_scale" in err


def test_config_is_frozen() -> None:
    cfg = Config()
    with pytest.raises(ValueError, match="frozen"):
        cfg.detector.confidence = 0.1  # type: ignore[misc]


# ------------------------------------------------------------------ paths.mode


@pytest.mark.parametrize("form", ["0{}", '"0{}"', "0o{}", '"0o{}"'], ids=["yaml-octal", "string", "0o", "string-0o"])
@pytest.mark.parametrize("files", ["640", "600"])
def test_a_mode_is_read_as_octal_and_dumped_as_octal(form: str, files: str, tmp_path: Path) -> None:
    text = f"paths:\n  mode:\n    files: {form.format(files)}\n    folders: {form.format('710')}\n"
    cfg = load_config(write(tmp_path, text))
    assert (cfg.paths.mode.files, cfg.paths.mode.folders) == (int(files, 8), 0o710)
    dumped = cfg.model_dump(mode="json")["paths"]["mode"]
    assert dumped == {"files": f"0{files}", "folders": "0710"}
    # What is dumped reads back as the same config.
    assert load_config(write(tmp_path, yaml.safe_dump({"paths": {"mode": dumped}}), "again.yaml")) == cfg


def test_the_default_modes_are_dumped_as_octal() -> None:
    assert dump_defaults()["paths"]["mode"] == {"files": "0640", "folders": "0750"}
    assert (Config().paths.mode.files, Config().paths.mode.folders) == (0o640, 0o750)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        # YAML reads 640 as decimal 640 (0o1200): the leading 0 was forgotten.
        ("files: 640", "paths.mode.files: 640 is not a permission mode: write it in octal with a leading 0, e.g. 0640"),
        ("folders: 750", "paths.mode.folders: 750 is not a permission mode: write it in octal with a leading 0"),
        ("files: 0400", "paths.mode.files: 0400 must give the daemon's own user 0600 on its files"),
        ("folders: 0640", "paths.mode.folders: 0640 must give the daemon's own user 0700 on its folders"),
        ("folders: 0777", "paths.mode.folders: 0777 lets every user write the daemon's folders"),
        ("files: 0646", "paths.mode.files: 0646 lets every user write the daemon's files"),
        ("files: rw-r-----", "paths.mode.files: 'rw-r-----' is not an octal mode such as 0640"),
        ('files: "0o648"', "paths.mode.files: '0o648' is not an octal mode such as 0640"),
    ],
    ids=["decimal-file", "decimal-folder", "owner-r", "owner-rw", "all-write", "others-write", "symbolic", "digit-8"],
)
def test_a_bad_mode_is_refused_on_its_line(
    line: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, f"paths:\n  mode:\n    {line}\n")
    code, out, err = cli(capsys, "check-config", "-c", path)
    assert code == 2
    assert out == ""
    (got,) = err.splitlines()
    assert got.startswith(f"edgeguard: {path}:3: {message}"), got


def test_a_bad_mode_given_with_set_names_the_set_key(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(capsys, "check-config", "--set", "paths.mode.files=640", "--set", "paths.mode.folders=0777")
    assert code == 2
    assert sorted(err.splitlines()) == [
        "edgeguard: --set paths.mode.files: 640 is not a permission mode: write it in octal with a leading 0, "
        "e.g. 0640",
        "edgeguard: --set paths.mode.folders: 0777 lets every user write the daemon's folders",
    ]


def test_mode_is_not_a_folder_of_the_daemon() -> None:
    folders = Config().paths.folders()
    assert "mode" not in folders
    assert all(isinstance(path, Path) for path in folders.values())


# ------------------------------------------------------------------ the shipped file


def test_shipped_config_validates(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, "check-config", "-c", SHIPPED)
    assert code == 0, err
    assert out.strip().splitlines()[-1] == f"{SHIPPED}: ok"


def test_shipped_config_equals_the_defaults() -> None:
    assert load_config(SHIPPED) == Config()
    assert load_config(SHIPPED).model_dump(mode="json") == dump_defaults()


def test_shipped_config_mentions_every_key() -> None:
    text = SHIPPED.read_text(encoding="utf-8")
    # The defaults as dumped: the plugins' sections (detector.maskrcnn, ...) are not fields of Config.
    keys = list(yaml_keys(dump_defaults()))
    assert "detector.files.weights" in keys and "daemon.pause_seconds" in keys  # the walk really recurses
    assert "detector.maskrcnn.mask_threshold" in keys and "detector.yolox.silhouettes" in keys
    for key in keys:
        leaf = key.rsplit(".", 1)[-1]
        assert re.search(rf"^\s*{re.escape(leaf)}:", text, re.M), f"{key} is not in {SHIPPED.name}"
    # ... and as real keys at the right place, not only in comments.
    in_file = set(yaml_keys(yaml.safe_load(text)))
    assert sorted(set(keys) - in_file) == []
    assert sorted(in_file - set(keys)) == []


# ------------------------------------------------------------------ cluster


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("address: ray://head:10001", "cluster.address: Ray Client (ray://) is not supported"),
        ("address: head", "cluster.address: 'head' is not HOST:PORT of the Ray head"),
        ("address: 'head:99999'", "cluster.address: 'head:99999' is not HOST:PORT"),
        ("mode: sometimes", "cluster.mode: Input should be 'prefer' or 'only'"),
        ("actors_per_node: 0", "cluster.actors_per_node: Input should be greater than or equal to 1"),
        ("token_file: /nonexistent/token", "cluster.token_file: /nonexistent/token is not a readable file"),
        ("tls: {ca: /etc/hostname}", "cluster.tls.cert: TLS needs ca, cert and key together"),
    ],
    ids=["ray-client", "no-port", "bad-port", "mode", "actors", "token", "tls-partial"],
)
def test_a_bad_cluster_key_is_refused_on_its_line(
    line: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, f"cluster:\n  {line}\n")
    code, out, err = cli(capsys, "check-config", "-c", path)
    assert code == 2, out
    (got,) = err.splitlines()
    assert got.startswith(f"edgeguard: {path}:2: {message}"), got


def test_a_cluster_address_and_its_security_files_check_ok(tmp_path: Path) -> None:
    token = write(tmp_path, "secret\n", "token")
    cfg = load_config(
        None,
        [
            "cluster.address=10.0.0.5:6379",
            f"cluster.token_file={token}",
            f"cluster.tls.ca={token}",
            f"cluster.tls.cert={token}",
            f"cluster.tls.key={token}",
        ],
    )
    assert cfg.cluster.on and cfg.cluster.tls.on and not Config().cluster.on
