"""Pacing requests to Microsoft Graph per tenant, so that throttling costs time, not requests.

Graph budgets requests per app per tenant over a sliding window and answers the rest with
429 and a Retry-After (concepts/throttling-limits.md). A sync runs each tenant on a thread
of its own, and a tenant's requests share its budget, so the client keeps per tenant what
the server keeps, and holds a request back rather than have it refused:

* **Proactively**, when a budget is configured (``[throttling] graph_requests`` per
  ``graph_window_seconds``): a request waits until it fits the sliding window of its tenant.
* **Reactively**, always: once any request of a tenant is answered 429 or 503 with a
  Retry-After, every request of that tenant, on whichever thread, waits until then, since
  the server said that anything sooner would fail.

A request's key is (budgeted base URL, tenant); the tenant comes from the ``tenant`` the
sync engine binds in structlog's context vars around each tenant. URLs outside the budgeted
bases (login, Partner Center) are not paced.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import attrs
import structlog

if TYPE_CHECKING:
    from .config import Config

log = structlog.get_logger(__name__)

#: Answers whose Retry-After holds back every request of their key.
HOLDING_STATUSES = frozenset({429, 503})


@attrs.frozen
class PaceKey:
    """What one budget is kept for: a budgeted API and a tenant (``None`` when no tenant is
    bound, as for a partner's own calls)."""

    endpoint: str
    tenant: str | None


@attrs.frozen
class Turn:
    """A request allowed to go: hand it back to `Pacer.finish` with its answer."""

    key: PaceKey
    #: Seconds the request was held back before it was allowed to go.
    waited: float


@attrs.define
class _KeyState:
    #: When the answers still inside the window arrived, oldest first.
    answered: deque[float] = attrs.field(factory=deque)
    #: Requests allowed to go whose answer has not come yet.
    in_flight: int = 0
    #: No request of the key goes before this moment (the latest Retry-After).
    not_before: float = -math.inf


class Pacer:
    """Per (endpoint, tenant) pacing of outbound requests; thread-safe, one per process.

    ``endpoints`` are the budgeted base URLs (Graph's); a URL is budgeted when it starts
    with one of them, so that an API served under a path prefix (the emulator's ``/graph``)
    is told apart from its neighbours on the same host. ``requests`` per
    ``window_seconds`` is the budget (``0``: none, only Retry-After holds requests back).
    ``clock`` and ``sleep`` are injectable for tests; `HttpClient` passes its own ``sleep``
    to `wait_turn`.
    """

    def __init__(
        self,
        endpoints: Iterable[str],
        *,
        requests: int = 0,
        window_seconds: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if requests < 0:
            raise ValueError(f"requests must be 0 (no budget) or more, not {requests}")
        if requests and not (window_seconds > 0 and math.isfinite(window_seconds)):
            raise ValueError(f"window_seconds must be a number above 0, not {window_seconds}")
        self.endpoints = tuple(endpoint.rstrip("/") for endpoint in endpoints)
        self._prefixes = tuple(endpoint.lower() for endpoint in self.endpoints)
        self.requests = requests
        self.window_seconds = window_seconds
        self.clock = clock
        self.sleep = sleep
        self._lock = threading.Lock()
        self._keys: dict[PaceKey, _KeyState] = {}

    @classmethod
    def from_config(cls, config: Config) -> Pacer:
        """The pacer of ``config``: Graph's base URL, budgeted as ``[throttling]`` says."""
        throttling = config.throttling
        return cls(
            [config.endpoints.url("graph")],
            requests=throttling.graph_requests,
            window_seconds=throttling.graph_window_seconds,
        )

    def key_for(self, url: str) -> PaceKey | None:
        """The key ``url`` is paced under in the current context, or ``None`` if it is not."""
        lowered = url.lower()
        for endpoint, prefix in zip(self.endpoints, self._prefixes, strict=True):
            if lowered == prefix or lowered.startswith((prefix + "/", prefix + "?")):
                tenant = structlog.contextvars.get_contextvars().get("tenant")
                return PaceKey(endpoint, str(tenant).lower() if tenant else None)
        return None

    def wait_turn(self, url: str, *, sleep: Callable[[float], None] | None = None) -> Turn | None:
        """Wait until a request to ``url`` may go, and count it as gone.

        Returns ``None`` for a URL that is not paced; otherwise a `Turn` that must be given
        back to `finish` once the request is answered (or has failed), whatever happened.
        """
        key = self.key_for(url)
        if key is None:
            return None
        sleep = sleep or self.sleep
        waited = 0.0
        now = self.clock()
        while True:
            with self._lock:
                state = self._keys.setdefault(key, _KeyState())
                wait, reason = self._wait_needed(state, now)
                if wait <= 0:
                    state.in_flight += 1
                    return Turn(key=key, waited=waited)
            log.debug(
                "http.pacing_wait",
                endpoint=key.endpoint,
                reason=reason,
                wait=round(wait, 3),
            )
            sleep(wait)
            waited += wait
            # A wait counts as done once slept, as asked: with a test's instant sleep the
            # clock has not moved, and waiting again for the same moment would spin.
            now = max(self.clock(), now + wait)

    def finish(
        self, turn: Turn, *, status: int | None = None, retry_after: float | None = None
    ) -> bool:
        """Take a request's outcome: its ``status`` (``None``: no answer came) and the
        Retry-After it carried, in seconds (already capped by the caller's policy).

        Returns whether the answer holds back the key's requests until its Retry-After, so
        that the caller leaves the wait to its next `wait_turn`.
        """
        with self._lock:
            now = self.clock()
            state = self._keys[turn.key]
            state.in_flight -= 1
            if self.requests:
                # Counted from the answer, not the sending: the server counted the request
                # on arrival, earlier, so its window always frees before ours does and the
                # client never runs ahead of it. A request that got no answer may still have
                # been counted, so it is kept too.
                state.answered.append(now)
            if status not in HOLDING_STATUSES or retry_after is None:
                return False
            until = now + retry_after
            if until > state.not_before:
                state.not_before = until
                log.debug(
                    "http.pacing_hold",
                    endpoint=turn.key.endpoint,
                    status=status,
                    retry_after=round(retry_after, 3),
                )
            return True

    def _wait_needed(self, state: _KeyState, now: float) -> tuple[float, str]:
        """Seconds until a request of ``state``'s key may go (≤ 0: now), and why it waits."""
        wait, reason = state.not_before - now, "retry_after"
        if not self.requests:
            return wait, reason
        window = self.window_seconds
        while state.answered and state.answered[0] <= now - window:
            state.answered.popleft()
        excess = len(state.answered) + state.in_flight - self.requests + 1
        if excess <= 0:
            return wait, reason
        if excess <= len(state.answered):
            # The window has room once that many answered requests have left it.
            budget_wait = state.answered[excess - 1] + window - now
        else:
            # Requests still in flight hold the budget: the earliest one of them can leave
            # the window is a whole window after it is answered, so not before then.
            budget_wait = window
        if budget_wait > wait:
            return budget_wait, "budget"
        return wait, reason
