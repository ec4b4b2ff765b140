"""The one HTTP client every plugin (and MSAL, through `MsalHttpClient`) uses.

It pools connections, sets connect and read timeouts, and retries what is worth retrying:
429 and 503 after the server's Retry-After (capped), other 5xx and dropped connections with
exponential backoff and full jitter, all bounded in attempts and in total time. What an
answer means comes from the error table in `errors`. Every call, retried or not, leaves one
entry in the outbound request log, with the URL's secrets removed. Given a `Pacer`, it asks
it before each attempt (Graph's budget per tenant, and Retry-After holds on a whole tenant)
and tells it each outcome.

What requests reads of the environment (proxies and ``NO_PROXY``, a CA bundle in
``REQUESTS_CA_BUNDLE`` or ``CURL_CA_BUNDLE`` when ``verify`` is true) is read once per
origin, not once per request: requests scans the whole environment twice per call, about a
quarter of its own time per request, which a sync of hundreds of tenants pays thousands of
times a run. ``~/.netrc`` is never read: its Basic credentials would replace a bearer token.
``verify`` (``[endpoints] ca_bundle``) is passed with each request, never set on the session.
A redirect to another origin goes through that origin's proxies, as requests would send it.
"""

from __future__ import annotations

import email.utils
import os
import random
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import urlsplit

import attrs
import requests
import structlog
from requests.adapters import HTTPAdapter

from . import errors
from .errors import Action, ErrorTable, HttpError
from .logging import redact_text
from .pacing import Pacer, Turn

log = structlog.get_logger(__name__)


class _Session(requests.Session):
    """requests' session, with the environment read by the client (``environment``: a
    URL's proxies and ``verify``, read once per origin) instead of by requests on every
    call. On a redirect, requests re-reads the environment for the new URL only when it
    trusts it; this session gives the new URL's own proxies instead, so a redirect to
    another origin goes through that origin's proxy, or none where ``NO_PROXY`` says so,
    rather than through the first origin's."""

    def __init__(self, environment: Callable[[str], tuple[dict[str, str], bool | str]]) -> None:
        super().__init__()
        self.trust_env = False  # no ~/.netrc, no environment scan per call
        self._environment = environment

    def rebuild_proxies(
        self, prepared_request: requests.PreparedRequest, proxies: dict[str, str] | None
    ) -> dict[str, str]:
        assert prepared_request.url is not None
        own, _ = self._environment(prepared_request.url)
        return super().rebuild_proxies(prepared_request, dict(own))


IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})


@attrs.frozen(kw_only=True)
class RetryPolicy:
    """How hard to try. Defaults suit a sync that runs every few minutes."""

    max_attempts: int = 6
    #: Give up when the next wait would take the call past this many seconds in all.
    max_total_seconds: float = 300.0
    #: A Retry-After above this is waited for this long at most.
    retry_after_cap: float = 120.0
    backoff_base: float = 0.5
    backoff_max: float = 30.0

    def backoff(self, attempt: int, rng: random.Random) -> float:
        """Full jitter: a random wait up to base·2^attempt, capped."""
        return rng.uniform(0, min(self.backoff_max, self.backoff_base * 2 ** (attempt - 1)))


@attrs.frozen(kw_only=True)
class RequestLogEntry:
    """One outbound call, as the request log keeps it."""

    at: datetime
    method: str
    url: str
    status: int | None
    duration_ms: int
    retries: int
    outcome: str
    module: str | None = None
    connection: str | None = None
    tenant_id: str | None = None
    detail: str | None = None


class RequestLog(Protocol):
    def record(self, entry: RequestLogEntry) -> None: ...


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: a number (fractions allowed) or a date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - (now if now is not None else time.time()))


def redact_url(url: str) -> str:
    return redact_text(url)


class HttpClient:
    """Pooled, bounded, logged HTTP. One per process (or per test)."""

    def __init__(
        self,
        *,
        verify: bool | str = True,
        timeout: tuple[float, float] = (10.0, 120.0),
        retry: RetryPolicy | None = None,
        request_log: RequestLog | None = None,
        error_table: ErrorTable = errors.ERROR_TABLE,
        sleep: Callable[[float], None] = time.sleep,
        user_agent: str = "halo-integrator",
        pool_size: int = 32,
        rng: random.Random | None = None,
        pacer: Pacer | None = None,
    ) -> None:
        self.verify = verify
        #: Paces requests per tenant under Graph's throttling (see `pacing`); shared by
        #: every client of a process, since the server's budget is.
        self.pacer = pacer
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.request_log = request_log
        self.error_table = error_table
        self.sleep = sleep
        self.rng = rng or random.Random()
        self.session = _Session(self._environment)
        self._environments: dict[tuple[str, str], tuple[dict[str, str], bool | str]] = {}
        adapter = HTTPAdapter(pool_connections=pool_size, pool_maxsize=pool_size, max_retries=0)
        self.session.mount("https://", adapter)
        self.session.mount("http://", adapter)
        self.session.headers["User-Agent"] = user_agent

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> HttpClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- the one way out -------------------------------------------------------------------

    def request(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        json: Any = None,
        data: Any = None,
        stream: bool = False,
        idempotent: bool | None = None,
        raise_for_status: bool = True,
        allow_redirects: bool = True,
    ) -> requests.Response:
        """Send, retrying as the policy and the error table say.

        Raises a subclass of `HttpError` when the answer is an error (unless
        ``raise_for_status`` is false, as MSAL wants: it reads error bodies itself), or when
        the retries run out. ``idempotent`` marks a POST or PATCH safe to resend after a
        dropped connection (for example one carrying an idempotency key).
        """
        method = method.upper()
        safe = idempotent if idempotent is not None else method in IDEMPOTENT
        policy = self.retry
        # Time spent so far: in calls, plus in waits (counted as asked, so that a test's
        # instant sleep still meets the bound).
        spent = 0.0
        attempt = 0
        while True:
            attempt += 1
            # Time held back by the pacer is queueing, not retrying: it is not in ``spent``
            # (the wait before a retry is, when the retry is decided below).
            turn = self.pacer.wait_turn(url, sleep=self.sleep) if self.pacer else None
            call_started = time.monotonic()
            try:
                response, held = self._send(
                    turn,
                    method,
                    url,
                    params=params,
                    headers=headers,
                    json=json,
                    data=data,
                    stream=stream,
                    allow_redirects=allow_redirects,
                )
            except (
                requests.ConnectionError,
                requests.Timeout,
                requests.exceptions.ChunkedEncodingError,
            ) as exc:
                reason = f"{type(exc).__name__}: {_short(exc)}"
                spent += time.monotonic() - call_started
                wait = policy.backoff(attempt, self.rng)
                give_up = (
                    not safe
                    or attempt >= policy.max_attempts
                    or spent + wait > policy.max_total_seconds
                )
                self._log(method, url, None, call_started, attempt - 1, "connection_error", reason)
                if give_up:
                    error = errors.ConnectionFailed(
                        reason
                        if safe
                        else f"{reason} (not retried: the request may have been processed)",
                        method=method,
                        url=redact_url(url),
                        attempts=attempt,
                    )
                    raise error from exc
                log.warning(
                    "http.retry",
                    method=method,
                    url=redact_url(url),
                    reason=reason,
                    wait=round(wait, 3),
                )
                self.sleep(wait)
                continue

            spent += time.monotonic() - call_started
            status = response.status_code
            if status < 400:
                self._log(method, url, status, call_started, attempt - 1, "ok")
                return response
            body = errors.parse_body(response.text) if not stream else None
            action, error_type = errors.classify(status, body, self.error_table)
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            if action is Action.IGNORE:
                self._log(method, url, status, call_started, attempt - 1, "ignored")
                return response
            retryable = action is Action.RATE_LIMITED or (action is Action.RETRY and safe)
            if retryable:
                if retry_after is not None:
                    wait = min(retry_after, policy.retry_after_cap)
                else:
                    wait = policy.backoff(attempt, self.rng)
                if attempt < policy.max_attempts and spent + wait <= policy.max_total_seconds:
                    self._log(method, url, status, call_started, attempt - 1, "retried")
                    log.warning(
                        "http.retry",
                        method=method,
                        url=redact_url(url),
                        status=status,
                        code=errors.error_code(body),
                        wait=round(wait, 3),
                        attempt=attempt,
                    )
                    if not held:
                        self.sleep(wait)
                    # else the pacer holds every request of this tenant, the retry among
                    # them, until the Retry-After: the next attempt's turn does the waiting.
                    spent += wait
                    continue
            message = errors.error_message(body, response.text)
            self._log(method, url, status, call_started, attempt - 1, "error", message)
            if not raise_for_status:
                return response
            raise error_type(
                message,
                method=method,
                url=redact_url(url),
                status=status,
                code=errors.error_code(body),
                request_id=_request_id(response, body),
                attempts=attempt,
                retry_after=retry_after,
                body=body,
            )

    def _send(
        self, turn: Turn | None, method: str, url: str, *, stream: bool, **options: Any
    ) -> tuple[requests.Response, bool]:
        """One attempt, its body read (unless streamed), its outcome told to the pacer.

        Returns the response and whether the pacer now holds the request's tenant until the
        answer's Retry-After (capped by the policy, as a wait of our own would be).
        """
        proxies, verify = self._environment(url)
        try:
            response = self.session.request(
                method,
                url,
                stream=stream,
                timeout=self.timeout,
                verify=verify,
                proxies=proxies,
                **options,
            )
            if not stream:
                _ = response.content  # read now, so a dropped body is retried here
        except BaseException:
            if turn is not None:
                self._finish_turn(turn, None)
            raise
        return response, turn is not None and self._finish_turn(turn, response)

    def _environment(self, url: str) -> tuple[dict[str, str], bool | str]:
        """The proxies and the ``verify`` of requests to ``url``'s origin, as requests would
        take them from the environment (``NO_PROXY`` included): read on the origin's first
        request."""
        parts = urlsplit(url)
        origin = (parts.scheme.lower(), parts.netloc.lower())
        found = self._environments.get(origin)
        if found is None:
            proxies = requests.utils.get_environ_proxies(url)
            verify = self.verify
            if verify is True:
                verify = (
                    os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
                )
            found = self._environments[origin] = (proxies, verify)
        return found

    def _finish_turn(self, turn: Turn, response: requests.Response | None) -> bool:
        """Tell the pacer how an attempt went (``None``: no answer came); whether it now
        holds the request's tenant until a Retry-After."""
        assert self.pacer is not None  # only a pacer hands out turns
        if response is None:
            self.pacer.finish(turn)
            return False
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        if retry_after is not None:
            retry_after = min(retry_after, self.retry.retry_after_cap)
        return self.pacer.finish(turn, status=response.status_code, retry_after=retry_after)

    def get(self, url: str, **options: Any) -> requests.Response:
        return self.request("GET", url, **options)

    def post(self, url: str, **options: Any) -> requests.Response:
        return self.request("POST", url, **options)

    def json(self, method: str, url: str, **options: Any) -> Any:
        """Send and decode a JSON answer; an answer that is not JSON is an error."""
        return self.decoded(self.request(method, url, **options), method, url)

    @staticmethod
    def decoded(response: requests.Response, method: str, url: str) -> Any:
        """``response``'s JSON, as `json` decodes it (an answer that is not JSON is an
        `UnexpectedResponse`)."""
        try:
            return response.json()
        except ValueError:
            raise errors.UnexpectedResponse(
                f"expected JSON, got {response.headers.get('Content-Type', 'no content type')}: "
                f"{response.text[:200]!r}",
                method=method.upper(),
                url=redact_url(url),
                status=response.status_code,
            ) from None

    # -- the request log -------------------------------------------------------------------

    def _log(
        self,
        method: str,
        url: str,
        status: int | None,
        started: float,
        retries: int,
        outcome: str,
        detail: str | None = None,
    ) -> None:
        if self.request_log is None:
            return
        context = structlog.contextvars.get_contextvars()
        entry = RequestLogEntry(
            at=datetime.now(UTC),
            method=method,
            url=redact_url(url),
            status=status,
            duration_ms=round((time.monotonic() - started) * 1000),
            retries=retries,
            outcome=outcome,
            module=context.get("module"),
            connection=context.get("connection"),
            tenant_id=context.get("tenant"),
            detail=redact_text(detail)[:1000] if detail else None,
        )
        try:
            self.request_log.record(entry)
        except Exception:  # the log must never break the call it describes
            log.exception("http.request_log_failed")


class MsalHttpClient:
    """The shape MSAL's ``http_client`` expects, on top of `HttpClient`.

    MSAL reads error answers itself, so errors come back as responses, not exceptions;
    throttling and dropped connections are still retried by the client.
    """

    def __init__(self, client: HttpClient) -> None:
        self.client = client

    def get(
        self, url: str, params: Any = None, headers: Any = None, **kwargs: Any
    ) -> requests.Response:
        return self.client.request(
            "GET", url, params=params, headers=headers, raise_for_status=False
        )

    def post(
        self, url: str, params: Any = None, data: Any = None, headers: Any = None, **kwargs: Any
    ) -> requests.Response:
        # A token request is safe to resend: it creates nothing.
        return self.client.request(
            "POST",
            url,
            params=params,
            data=data,
            headers=headers,
            raise_for_status=False,
            idempotent=True,
        )

    def close(self) -> None:  # MSAL calls this on some paths
        pass


def _short(exc: BaseException) -> str:
    text = str(exc)
    return text if len(text) < 300 else text[:297] + "..."


def _request_id(response: requests.Response, body: Any) -> str | None:
    for header in ("request-id", "MS-RequestId", "x-ms-request-id", "client-request-id"):
        if response.headers.get(header):
            return response.headers[header]
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        inner = body["error"].get("innerError") or {}
        if isinstance(inner, dict):
            return inner.get("request-id")
    return None


__all__ = [
    "HttpClient",
    "HttpError",
    "MsalHttpClient",
    "RequestLog",
    "RequestLogEntry",
    "RetryPolicy",
    "parse_retry_after",
]
