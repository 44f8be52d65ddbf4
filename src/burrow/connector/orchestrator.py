"""The connector's configuration in force, and the two ways it changes while running:

- a **local reload** of config.yml (SIGHUP, or the file changing: its mtime/size/inode are polled
  every second), and
- a **remote push** from the edge (PROTOCOL.md 3.4, cloudflared's `Orchestrator.UpdateConfig`):
  versions not above the current one (initially -1) are ignored, an invalid config keeps the old
  one and reports the error, a valid one is applied to the next request.

Either way the new ingress replaces the old one atomically in the Dispatcher: requests in flight
keep the origin they already have, so nothing is dropped. A bad new config never replaces a good
one; the reason is logged (and, for a push, returned to the edge).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Callable
from typing import Any

from burrow.connector.proxy import Dispatcher
from burrow.errors import ConfigError
from burrow.ingress.config import load_config_file
from burrow.ingress.remote import decode_push, parse_remote_config
from burrow.ingress.rules import Ingress

log = logging.getLogger("burrow.connector.config")

POLL_INTERVAL = 1.0


def ingress_from_file(path: str) -> Ingress:
    """The ingress of a config file, validated as at start-up (ConfigError with cloudflared's
    messages otherwise)."""
    cfg = load_config_file(path)
    if cfg.warnings:
        log.warning("%s", cfg.warnings)
    return Ingress.parse(list(cfg.ingress), cfg.origin_request)


def rule_json(rule: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"service": str(rule.service)}
    if rule.hostname:
        out["hostname"] = rule.hostname
    if rule.path is not None:
        out["path"] = rule.path.pattern
    return out


class Orchestrator:
    """Owns the Dispatcher's ingress; applies local reloads and remote pushes."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        *,
        config_path: str | None = None,
        on_ingress: Callable[[Ingress], None] | None = None,
    ) -> None:
        self.dispatcher = dispatcher
        self.config_path = config_path
        self.on_ingress = on_ingress
        self.version = -1  # the remote version in force; -1 = the local configuration
        self.remote_config: dict[str, Any] | None = None
        self.last_push: tuple[int, str | None] | None = None  # (version received, error)
        self.reloads = 0
        self._stat = _stat(config_path) if config_path else None

    @property
    def ingress(self) -> Ingress:
        return self.dispatcher.ingress

    def _install(self, ingress: Ingress) -> None:
        if self.on_ingress is not None:
            self.on_ingress(ingress)
        self.dispatcher.replace_ingress(ingress)

    # --- remote push ------------------------------------------------------------------------

    def apply_remote(self, body: bytes) -> tuple[int, str | None]:
        """The `update-configuration` handler: (lastAppliedVersion, err)."""
        try:
            version, config = decode_push(body)
        except ConfigError as exc:
            log.error("failed to deserialize new configuration: %s", exc)
            return self.version, str(exc)
        if self.version >= version:
            log.debug(
                "current configuration version %d is equal or newer than received %d",
                self.version,
                version,
            )
            return self.version, None
        try:
            ingress = parse_remote_config(config)
        except ConfigError as exc:
            log.error("failed to update ingress to configuration version %d: %s", version, exc)
            self.last_push = (version, str(exc))
            return self.version, str(exc)
        self._install(ingress)
        self.version = version
        self.remote_config = config
        self.last_push = (version, None)
        log.info(
            "updated to new configuration version %d (%d ingress rules)",
            version,
            len(ingress.rules),
        )
        return self.version, None

    # --- local reload ----------------------------------------------------------------------

    def reload_local(self, reason: str = "reload requested") -> bool:
        """Re-read the config file; True when a new ingress was installed."""
        path = self.config_path
        if path is None:
            log.info("%s, but no configuration file is in use: nothing to reload", reason)
            return False
        self._stat = _stat(path)
        if self.version >= 0:
            log.warning(
                "%s: ignoring %s, the tunnel is managed remotely (configuration version %d)",
                reason,
                path,
                self.version,
            )
            return False
        try:
            ingress = ingress_from_file(path)
        except ConfigError as exc:
            log.error("%s: keeping the running configuration, %s is invalid: %s", reason, path, exc)
            return False
        self._install(ingress)
        self.reloads += 1
        log.info("%s: reloaded %s (%d ingress rules)", reason, path, len(ingress.rules))
        return True

    def file_changed(self) -> bool:
        return self.config_path is not None and _stat(self.config_path) != self._stat

    async def watch(self, interval: float = POLL_INTERVAL) -> None:
        """Reload whenever the file's mtime, size or inode change (polled every `interval`)."""
        while True:
            await asyncio.sleep(interval)
            if self.file_changed():
                self.reload_local("configuration file changed")

    def config_document(self) -> dict[str, Any]:
        """What `/config` shows: `{"version": N, "config": {...}}`."""
        if self.remote_config is not None:
            return {"version": self.version, "config": self.remote_config}
        return {
            "version": self.version,
            "config": {
                "ingress": [rule_json(r) for r in self.ingress.rules],
                "warp-routing": {"enabled": False},
            },
        }

    def local_config_bytes(self) -> bytes:
        return json.dumps(self.config_document()["config"]).encode()


def _stat(path: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)
