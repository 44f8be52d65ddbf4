"""Prometheus view of Access decisions at the edge: `burrow_access_decisions_total{app,
outcome}` (allow, bypass, deny, login, and login-allow/login-deny at the end of a login, cli-token
for `burrow access login` transfers). Read from the service's in-memory counters at scrape
time, so counting costs the data path one dict update."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from burrow.access.service import AccessService


class AccessCollector(Collector):
    def __init__(self, service: Callable[[], AccessService | None]) -> None:
        self._service = service

    def collect(self) -> Iterator[Metric]:
        c = CounterMetricFamily(
            "burrow_access_decisions",
            "Access decisions at this edge, by application and outcome",
            labels=["app", "outcome"],
        )
        svc = self._service()
        if svc is not None:
            for (app, outcome), n in sorted(svc.decisions.items()):
                c.add_metric([app, outcome], n)
        yield c
