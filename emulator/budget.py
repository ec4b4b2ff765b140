"""Graph's request budget per app per tenant: a sliding window, answered with 429 when spent.

Microsoft Graph throttles "per app per tenant" (concepts/throttling-limits.md): so many
requests in a window of so many seconds, after which it answers ``429 Too Many Requests``
with a ``Retry-After`` header (concepts/throttling.md). `TenantBudget` is that rule for the
emulator (``halo-integrator emulator --tenant-budget 10/2``), keyed by the app client ID
and tenant of the bearer token, together with the bookkeeping a benchmark reads back from
``GET /_admin/budget``: per tenant, the requests admitted, the requests throttled, and the
*wasted* ones, retries the emulator had already said would fail.

A throttled request is *wasted* when it repeats one throttled before (the same method and
URL: a retry) and comes before the latest Retry-After moment its (app, tenant) had been
told when that earlier request was refused. Only retries are judged: a first try from
another thread may have been on its way before the 429 that would have held it back reached
the client, which no client can avoid; a retry cannot have missed it.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import attrs


@attrs.frozen
class BudgetLimit:
    """``requests`` per sliding window of ``window_seconds``, per app per tenant."""

    requests: int = attrs.field()
    window_seconds: float = attrs.field()

    @requests.validator
    def _positive_requests(self, _: Any, value: int) -> None:
        if value < 1:
            raise ValueError(f"a budget needs at least 1 request per window, not {value}")

    @window_seconds.validator
    def _positive_window(self, _: Any, value: float) -> None:
        if not (value > 0 and math.isfinite(value)):
            raise ValueError(f"a budget's window must be a number of seconds above 0, not {value}")

    @classmethod
    def parse(cls, text: str) -> BudgetLimit:
        """``"N/SECONDS"``, as ``--tenant-budget`` takes it: ``"10/2"`` is 10 requests per 2 s."""
        usage = "give REQUESTS/SECONDS, for example 10/2 (10 requests per sliding window of 2 s)"
        requests, slash, seconds = text.partition("/")
        try:
            count, window = int(requests), float(seconds)
        except ValueError:
            raise ValueError(f"{text!r} is not a budget: {usage}") from None
        if not slash:
            raise ValueError(f"{text!r} is not a budget: {usage}")
        try:
            return cls(count, window)
        except ValueError as exc:
            raise ValueError(f"{text!r}: {exc}") from None

    def describe(self) -> dict[str, Any]:
        return {"requests": self.requests, "window_seconds": self.window_seconds}


@attrs.define
class _Counters:
    requests: int = 0
    throttled: int = 0
    wasted: int = 0


@attrs.define
class _Window:
    """One (app, tenant)'s admitted requests, and what it was told while throttled."""

    #: Arrival times of the admitted requests still inside the window, oldest first.
    admitted: deque[float] = attrs.field(factory=deque)
    #: The latest moment a Retry-After announced to this (app, tenant).
    announced: float = -math.inf
    #: Requests throttled so far, by method and URL: the moment a retry of each had to
    #: wait for. Entries are dropped once that moment has passed.
    told: dict[tuple[str, str], float] = attrs.field(factory=dict)


class TenantBudget:
    """Admits or throttles Graph requests per (app client ID, tenant); thread-safe.

    Without a `limit` every request is admitted (and counted). ``clock`` is injectable so
    that a test can move time by hand.
    """

    def __init__(
        self, limit: BudgetLimit | None = None, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._limit = limit
        self.clock = clock
        self._lock = threading.Lock()
        self._windows: dict[tuple[str, str], _Window] = {}
        self._counters: dict[str, _Counters] = {}

    @property
    def limit(self) -> BudgetLimit | None:
        return self._limit

    @limit.setter
    def limit(self, value: BudgetLimit | None) -> None:
        # A new budget starts with empty windows; the counters go on.
        with self._lock:
            self._limit = value
            self._windows.clear()

    def admit(self, client_id: str, tenant: str, method: str, url: str) -> int | None:
        """``None`` if the request may go on, else the whole seconds of its Retry-After.

        The Retry-After is rounded up so that a request sent that many seconds later finds
        the oldest counted request gone from the window, and so a free place.
        """
        tenant = tenant.lower()
        with self._lock:
            now = self.clock()
            counters = self._counters.setdefault(tenant, _Counters())
            limit = self._limit
            if limit is None:
                counters.requests += 1
                return None
            window = self._windows.setdefault((client_id, tenant), _Window())
            horizon = now - limit.window_seconds
            while window.admitted and window.admitted[0] <= horizon:
                window.admitted.popleft()
            if len(window.admitted) < limit.requests:
                window.admitted.append(now)
                counters.requests += 1
                return None
            # A throttled request is not counted against the budget. Graph's page says it
            # keeps logging usage while a client is throttled; the emulator does not, so
            # that a Retry-After stays a promise a client can plan on (were refusals
            # counted, one thread's early retry would push back the moment promised to all
            # the others of the tenant), and so that a client's early retries show up
            # where they can be read, in ``wasted``, rather than as a slower run.
            counters.throttled += 1
            identity = (method.upper(), url)
            if now < window.told.get(identity, -math.inf):
                counters.wasted += 1
            retry_after = max(1, math.ceil(window.admitted[0] + limit.window_seconds - now))
            window.announced = max(window.announced, now + retry_after)
            window.told = {k: v for k, v in window.told.items() if v > now}
            window.told[identity] = window.announced
            return retry_after

    def snapshot(self) -> dict[str, Any]:
        """What ``GET /_admin/budget`` answers."""
        with self._lock:
            return {
                "budget": self._limit.describe() if self._limit else None,
                "tenants": {tenant: attrs.asdict(c) for tenant, c in self._counters.items()},
            }

    def reset(self) -> None:
        """Zero the counters; the budget stays. The windows empty too, so that a benchmark
        row that follows a reset is not throttled for the requests of the one before."""
        with self._lock:
            self._counters.clear()
            self._windows.clear()
