"""What the daemon hands its Ray driver: Ray's security settings from the config, and a quick reachability check."""

from __future__ import annotations

import socket
from pathlib import Path

from edgeguard.cluster.bridge import reachable
from edgeguard.cluster.client import ray_environment
from edgeguard.config import load_config


def test_token_and_tls_settings_become_rays_environment(tmp_path: Path) -> None:
    files = {}
    for name in ("token", "ca.crt", "node.crt", "node.key"):
        files[name] = tmp_path / name
        files[name].write_text("x", encoding="utf-8")
    cfg = load_config(
        None,
        [
            "cluster.address=10.0.0.5:6379",
            f"cluster.token_file={files['token']}",
            f"cluster.tls.ca={files['ca.crt']}",
            f"cluster.tls.cert={files['node.crt']}",
            f"cluster.tls.key={files['node.key']}",
        ],
    )
    env = ray_environment(cfg, {"PATH": "/usr/bin", "RAY_AUTH_MODE": "disabled"})
    assert env == {
        "PATH": "/usr/bin",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(files["token"]),
        "RAY_USE_TLS": "1",
        "RAY_TLS_CA_CERT": str(files["ca.crt"]),
        "RAY_TLS_SERVER_CERT": str(files["node.crt"]),
        "RAY_TLS_SERVER_KEY": str(files["node.key"]),
    }


def test_without_security_settings_the_environment_is_left_as_the_operator_set_it() -> None:
    cfg = load_config(None, ["cluster.address=10.0.0.5:6379"])
    assert ray_environment(cfg, {"RAY_AUTH_MODE": "disabled"}) == {"RAY_AUTH_MODE": "disabled"}


def test_a_head_that_does_not_listen_is_unreachable_at_once() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        assert reachable(f"127.0.0.1:{port}", 2.0) is not None  # bound, not listening: refused
        s.listen()
        assert reachable(f"127.0.0.1:{port}", 2.0) is None
