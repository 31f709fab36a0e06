"""Readiness: which of the app's deployments did not answer, checked cheaply.

A deployment counts as answering when it served a call within the last `timeout_s` (under load
no probe is sent at all, so a busy replica is never reported missing because its queue is
long), else when a probe (a trivial method call) answers within `timeout_s`. Pure asyncio: the
probes are plain async callables, Ray handles in the app and scripted ones in tests.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

Probe = Callable[[], Awaitable[Any]]


class Liveness:
    """Probes by deployment name, and when each last answered a real call."""

    def __init__(self, probes: Mapping[str, Probe] | None = None) -> None:
        self.probes: dict[str, Probe] = dict(probes or {})
        self._answered: dict[str, float] = {}

    def add(self, name: str, probe: Probe) -> None:
        self.probes[name] = probe

    def answered(self, name: str) -> None:
        self._answered[name] = time.monotonic()

    async def missing(self, timeout_s: float) -> list[str]:
        """The deployments that neither answered recently nor answer a probe now, in order."""
        now = time.monotonic()

        async def probe_one(name: str, probe: Probe) -> str | None:
            if now - self._answered.get(name, -math.inf) < timeout_s:
                return None
            try:
                await asyncio.wait_for(asyncio.ensure_future(probe()), timeout_s)
            except Exception:  # timeout, dead replica, none placed yet: all mean "missing"
                return name
            self._answered[name] = time.monotonic()
            return None

        found = await asyncio.gather(*(probe_one(n, p) for n, p in self.probes.items()))
        return [name for name in found if name is not None]
