"""burrow.launch: what `edge serve` / `tunnel run` hand over to their re-executed selves.

The hand-over must carry everything the server needs through pickling (compiled ingress rules
cannot be pickled: the connector's is rebuilt from plain data), be addressed to this very PID
only, and never re-execute a process that did not start at burrow's CLI entry point (a test
runner invoking the CLI in-process, for one). `os.execve` is replaced in these tests, so a bug
cannot replace the test process.
"""

from __future__ import annotations

import os
import pickle
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from burrow import launch
from burrow.connector.credentials import TunnelCredentials
from burrow.connector.settings import IngressSpec, ingress_spec
from burrow.edge.server import EdgeConfig
from burrow.ingress.config import load_config_file

CONFIG = """\
tunnel: x
originRequest:
  connectTimeout: 10s
ingress:
  - hostname: a.example.com
    path: ^/api
    service: http://127.0.0.1:8001
    originRequest:
      noTLSVerify: true
  - hostname: "*.example.com"
    service: http://127.0.0.1:8002
  - service: http_status:404
"""


def _creds() -> TunnelCredentials:
    return TunnelCredentials("a" * 32, b"s" * 32, uuid.uuid4(), edge=("127.0.0.1:7844",))


def _connector_launch(tmp_path: Path) -> launch.ConnectorLaunch:
    path = tmp_path / "config.yml"
    path.write_text(CONFIG)
    spec = ingress_spec(None, None, load_config_file(str(path)))
    options: dict[str, Any] = {"credentials": _creds(), "ha_connections": 2}
    options["config_path"] = str(path)
    return launch.ConnectorLaunch(spec, options, launch.LogSettings("debug", "json", None))


def test_connector_launch_pickles_and_rebuilds_the_same_ingress(tmp_path: Path) -> None:
    spec = _connector_launch(tmp_path)
    again = pickle.loads(pickle.dumps(spec))
    assert again == spec
    built, rebuilt = spec.config(), again.config()
    assert rebuilt.credentials == built.credentials
    assert rebuilt.credentials.tunnel_secret == b"s" * 32
    assert (rebuilt.ha_connections, rebuilt.config_path) == (2, str(tmp_path / "config.yml"))
    for host, path in [("a.example.com", "/api/x"), ("b.example.com", "/"), ("c.org", "/")]:
        index, rule = rebuilt.ingress.match(host, path)
        assert (index, str(rule.service)) == (
            built.ingress.match(host, path)[0],
            str(built.ingress.match(host, path)[1].service),
        )
    assert rebuilt.ingress.rules[0].origin_request.no_tls_verify is True
    assert rebuilt.ingress.rules[0].origin_request.connect_timeout == 10.0


def test_ingress_spec_precedence() -> None:
    assert ingress_spec("http://127.0.0.1:1", None, None) == IngressSpec(url="http://127.0.0.1:1")
    assert ingress_spec(None, True, None) == IngressSpec(hello_world=True)
    assert ingress_spec(None, None, None) == IngressSpec()
    assert str(IngressSpec().build().rules[0].service) == "http_status:503"


def test_edge_launch_pickles(tmp_path: Path) -> None:
    cfg = EdgeConfig(state_dir=tmp_path, tls_certs=[(tmp_path / "c.pem", tmp_path / "k.pem")])
    cfg.limits.max_body_bytes = 1 << 20
    spec = launch.EdgeLaunch(cfg, launch.LogSettings("warn", "text", str(tmp_path / "log")))
    assert pickle.loads(pickle.dumps(spec)) == spec


def test_no_reexec_outside_the_cli_entry_point(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_exec(*args: object) -> None:
        raise AssertionError(f"execve called: {args}")

    monkeypatch.setattr(os, "execve", no_exec)
    spec = launch.EdgeLaunch(EdgeConfig())
    launch.handoff(spec)  # pytest's __main__ is not burrow.cli.main: stays in-process
    monkeypatch.setattr(launch, "_entry_is_burrow_main", lambda: True)
    monkeypatch.setenv(launch.NO_REEXEC_ENV, "1")
    launch.handoff(spec)
    assert launch.HANDOFF_ENV not in os.environ


def test_handoff_reexecutes_the_command_line_and_resume_runs_the_spec(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The two halves, with `execve` stopped at the boundary: the hand-over's environment and
    descriptor, then `resume` in "the new image" (this process, same PID)."""
    spec = _connector_launch(tmp_path)
    monkeypatch.delenv(launch.NO_REEXEC_ENV, raising=False)
    monkeypatch.setattr(launch, "_entry_is_burrow_main", lambda: True)
    execs: list[tuple[str, list[str], dict[str, str]]] = []

    def fake_execve(path: str, argv: list[str], env: dict[str, str]) -> None:
        execs.append((path, argv, env))
        fd = int(env[launch.HANDOFF_ENV].split(":")[1])
        assert os.get_inheritable(fd)
        monkeypatch.setenv(launch.HANDOFF_ENV, env[launch.HANDOFF_ENV])
        ran: list[object] = []
        monkeypatch.setattr(launch, "_run", ran.append)
        launch.resume()
        assert ran == [spec]
        assert launch.HANDOFF_ENV not in os.environ  # not passed on to child processes
        raise OSError("stop here")  # the hand-over failed: handoff returns

    monkeypatch.setattr(os, "execve", fake_execve)
    launch.handoff(spec)
    [(path, argv, env)] = execs
    assert (path, argv) == (sys.executable, sys.orig_argv)
    assert env[launch.HANDOFF_ENV].startswith(f"{os.getpid()}:")
    assert not any("s" * 32 in v or "config.yml" in v for k, v in env.items() if k != "PWD")
    # The server starts with glibc's thresholds for 1 MiB body buffers (the user's values win).
    for name, value in launch.MALLOC_TUNING.items():
        assert env[name] == os.environ.get(name, value)


def test_resume_ignores_a_handoff_for_another_process(monkeypatch: pytest.MonkeyPatch) -> None:
    r, w = os.pipe()
    try:
        os.write(w, pickle.dumps(launch.EdgeLaunch(EdgeConfig())))
        monkeypatch.setenv(launch.HANDOFF_ENV, f"{os.getpid() + 1}:{r}")
        monkeypatch.setattr(launch, "_run", lambda spec: pytest.fail("ran a foreign hand-over"))
        launch.resume()
        assert launch.HANDOFF_ENV not in os.environ
        os.fstat(r)  # not consumed
    finally:
        os.close(r)
        os.close(w)
