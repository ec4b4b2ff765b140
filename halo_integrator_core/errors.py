"""Typed errors of the shared HTTP client, and the table that decides what each answer means.

Every answer an API gives is classified by one table (`ERROR_TABLE`), not by an if-chain:
a rule matches a status and, optionally, an error code taken from the body in any of the
shapes Microsoft's APIs use (Graph's ``{"error": {"code"}}``, Partner Center's ``{"code"}``,
the identity platform's ``{"error", "error_codes"}``); its action says whether to retry
(after Retry-After or a backoff), or to fail, and with which error type.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable
from typing import Any

import attrs


class Action(enum.Enum):
    RETRY = "retry"  # transient: back off and try again
    RATE_LIMITED = "rate_limited"  # retry after the server's Retry-After
    FAIL = "fail"  # a real answer: raise its error type
    IGNORE = "ignore"  # not an error for the caller (e.g. 404 on an optional resource)


class HttpError(Exception):
    """An HTTP exchange that did not succeed. ``str()`` says what, where, and what to do."""

    #: What usually fixes it; subclasses say more.
    hint = ""

    def __init__(
        self,
        message: str,
        *,
        method: str = "",
        url: str = "",
        status: int | None = None,
        code: str | None = None,
        request_id: str | None = None,
        attempts: int = 1,
        retry_after: float | None = None,
        body: Any = None,
    ) -> None:
        self.method = method
        self.url = url
        self.status = status
        self.code = code
        self.request_id = request_id
        self.attempts = attempts
        self.retry_after = retry_after
        self.body = body
        self.detail = message
        super().__init__(self._compose())

    def _compose(self) -> str:
        where = f"{self.method} {self.url}".strip()
        status = f" → {self.status}" if self.status is not None else ""
        code = f" {self.code}" if self.code else ""
        tries = f" after {self.attempts} attempts" if self.attempts > 1 else ""
        hint = f" ({self.hint})" if self.hint else ""
        return f"{where}{status}{code}{tries}: {self.detail}{hint}"


class ConnectionFailed(HttpError):
    hint = "the host could not be reached: check the endpoint settings and the network"


class ServiceUnavailable(HttpError):
    hint = "the service kept failing; the next run will try again"


class RateLimited(HttpError):
    hint = "the API kept throttling; the next run will try again"


class BadRequest(HttpError):
    pass


class AuthenticationFailed(HttpError):
    hint = "the token was refused: check the app registration and its secret"


class PermissionDenied(HttpError):
    hint = "the app or account lacks a permission or role for this call"


class NotFound(HttpError):
    pass


class Gone(HttpError):
    hint = "the resource or cursor expired: start over from a full listing"


class Conflict(HttpError):
    pass


class NotSupported(BadRequest):
    """501 Not Implemented: the API does not serve this request as asked (Graph answers so
    a listing that selects a property kept outside the directory, such as a user's
    ``skills``: delta-query-overview.md, "Properties stored outside of the main data
    store"). Asking again cannot help."""

    hint = "the API does not support this request as asked: retrying cannot help"


class UnexpectedResponse(HttpError):
    """The answer was not what the API documents (bad JSON, wrong shape)."""


class PagingLoop(HttpError):
    hint = "the API returned the same page link twice; stopped to avoid looping forever"


@attrs.frozen
class Rule:
    """One row of the table: which answers it matches, and what to do."""

    status: int | range
    action: Action
    error: type[HttpError] = HttpError
    codes: frozenset[str] | None = None  # None: any code

    def matches(self, status: int, code: str | None) -> bool:
        in_status = (
            status in self.status if isinstance(self.status, range) else status == self.status
        )
        if not in_status:
            return False
        return self.codes is None or (code is not None and code.lower() in self.codes)


def _codes(*codes: str) -> frozenset[str]:
    return frozenset(code.lower() for code in codes)


#: First match wins. Codes are compared case-insensitively.
ERROR_TABLE: tuple[Rule, ...] = (
    Rule(429, Action.RATE_LIMITED, RateLimited),
    Rule(503, Action.RATE_LIMITED, ServiceUnavailable),
    # Graph's answer to an expired delta token (and Partner Center's expired manifests):
    # 410, or "a 40X-series error with error codes such as syncStateNotFound"
    # (delta-query-overview.md, "Token duration"), whichever 40X it is.
    Rule(410, Action.FAIL, Gone),
    Rule(
        range(400, 500),
        Action.FAIL,
        Gone,
        _codes("syncStateNotFound", "resyncRequired", "syncStateInvalid"),
    ),
    Rule(401, Action.FAIL, AuthenticationFailed),
    Rule(403, Action.FAIL, PermissionDenied),
    Rule(404, Action.FAIL, NotFound),
    Rule(409, Action.FAIL, Conflict),
    Rule(412, Action.FAIL, Conflict),
    Rule(501, Action.FAIL, NotSupported),
    Rule(range(500, 600), Action.RETRY, ServiceUnavailable),
    Rule(range(400, 500), Action.FAIL, BadRequest),
)


def error_code(body: Any) -> str | None:
    """The error code of a JSON error body, in any of the shapes Microsoft's APIs use."""
    if not isinstance(body, dict):
        return None
    error = body.get("error")
    if isinstance(error, dict) and error.get("code") is not None:
        return str(error["code"])
    codes = body.get("error_codes")
    if isinstance(codes, list) and codes:
        return f"AADSTS{codes[0]}"
    if isinstance(error, str):
        return error
    if body.get("code") is not None:
        return str(body["code"])
    return None


def error_message(body: Any, text: str) -> str:
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        for key in ("error_description", "description", "message"):
            if body.get(key):
                return str(body[key]).split("\r\n")[0]
    return text.strip()[:300] or "no details given"


def parse_body(text: str) -> Any:
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None


def classify(
    status: int, body: Any, table: tuple[Rule, ...] = ERROR_TABLE
) -> tuple[Action, type[HttpError]]:
    code = error_code(body)
    for rule in table:
        if rule.matches(status, code):
            return rule.action, rule.error
    return Action.FAIL, HttpError


ErrorTable = tuple[Rule, ...]
Classifier = Callable[[int, Any], tuple[Action, type[HttpError]]]
