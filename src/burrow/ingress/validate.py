"""`tunnel ingress validate` and `tunnel ingress rule URL`, as text-producing functions.

Each returns a `CommandResult`: what to print on stdout, the error for stderr (None on success)
and the exit code, with cloudflared's wording.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from burrow.errors import ConfigError
from burrow.ingress.config import ConfigFile, load_config_file
from burrow.ingress.rules import Ingress, go_url_parse

CONFIG_FILE_NAMES = ("config.yml", "config.yaml")
# cloudflared's search order, then burrow's own directory
CONFIG_SEARCH_DIRS = (
    "~/.cloudflared",
    "~/.cloudflare-warp",
    "~/cloudflare-warp",
    "/etc/cloudflared",
    "/usr/local/etc/cloudflared",
    "~/.config/burrow",
)

NO_CONFIG_FILE = (
    "No configuration file was found. Please create one, or use the --config flag to specify its "
    "filepath. You can use the help command to learn more about configuration files"
)


@dataclass(frozen=True, slots=True)
class CommandResult:
    stdout: str
    error: str | None
    exit_code: int


def find_default_config(dirs: Sequence[str] = CONFIG_SEARCH_DIRS) -> str | None:
    """The first existing config file in the default locations (cloudflared's order)."""
    for directory in dirs:
        for name in CONFIG_FILE_NAMES:
            path = Path(os.path.expanduser(directory)) / name
            if path.exists():
                return str(path)
    return None


def _load(config_path: str | None) -> ConfigFile:
    """cloudflared's ReadConfigFile: an explicit path must exist; no default file is fine."""
    if config_path is None:
        found = find_default_config()
        if found is None:
            return ConfigFile(source="")
        config_path = found
    return load_config_file(config_path)


def validate_command(config_path: str | None) -> CommandResult:
    try:
        conf = _load(config_path)
    except ConfigError as exc:
        return CommandResult("", str(exc), 1)
    if conf.source == "":
        return CommandResult("", NO_CONFIG_FILE, 1)
    out = f"Validating rules from {conf.source}\n"
    try:
        Ingress.parse(conf.ingress, conf.origin_request)
    except ConfigError as exc:
        return CommandResult(out, f"Validation failed: {exc}", 1)
    if conf.warnings:
        out += (
            "Warning: unused keys detected in your config file. Here is a list of unused keys:\n"
            f"{conf.warnings}\n"
        )
        return CommandResult(out, None, 0)
    return CommandResult(out + "OK\n", None, 0)


def rule_command(config_path: str | None, url: str) -> CommandResult:
    try:
        conf = _load(config_path)
    except ConfigError as exc:
        return CommandResult("", str(exc), 1)
    if url == "":
        return CommandResult(
            "", "cloudflared tunnel rule expects a single argument, the URL to test", 1
        )
    try:
        parsed = go_url_parse(url)
    except ValueError:
        return CommandResult("", f"{url} is not a valid URL", 1)
    if parsed.hostname == "" and parsed.scheme == "":
        return CommandResult("", f"{url} doesn't have a hostname, consider adding a scheme", 1)
    out = f"Using rules from {conf.source}\n"
    try:
        ingress = Ingress.parse(conf.ingress, conf.origin_request)
    except ConfigError as exc:
        return CommandResult(out, f"Validation failed: {exc}", 1)
    index, rule = ingress.match(parsed.hostname, parsed.path)
    out += f"Matched rule #{index}\n{rule.multi_line_string()}\n"
    return CommandResult(out, None, 0)
