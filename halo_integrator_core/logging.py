"""Structured logs: configured once at the command-line entry, redacted everywhere.

Readable on a terminal, JSON lines otherwise. The standard library's loggers (APScheduler,
msal, urllib3, alembic) go through the same processors, so every line has one format and
passes the same redaction, which removes secrets, tokens and Authorization values from
event keys, nested values, URLs and free text alike.
"""

from __future__ import annotations

import functools
import logging
import re
import sys
from collections.abc import Mapping
from typing import Any, TextIO

import structlog

REDACTED = "[redacted]"

#: Keys whose values are secrets whatever they hold.
SECRET_KEY = re.compile(
    r"(secret|password|passwd|token|assertion|authorization|api_?key|credential|cookie|^sig$)",
    re.IGNORECASE,
)

# Secrets inside free text: bearer tokens, secret-named query or form fields, JWTs.
_TEXT_PATTERNS = (
    (re.compile(r"(?i)\b(bearer|signature|basic)\s+[A-Za-z0-9._~+/=-]{8,}"), rf"\1 {REDACTED}"),
    (
        re.compile(
            r"(?i)(\b(?:client_secret|client_assertion|access_token|refresh_token|id_token|"
            r"password|sastoken)[=:]\s*\"?)[^&\s\"',]+"
        ),
        rf"\1{REDACTED}",
    ),
    # In URLs only: an authorization code, a SAS signature, a token parameter.
    (re.compile(r"(?i)([?&](?:code|sig|token|skoid|sktid)=)[^&\s\"'#]+"), rf"\1{REDACTED}"),
    (re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*"), REDACTED),
)


#: What each of `_TEXT_PATTERNS` cannot match without, lowercased: an ASCII text holding none
#: of these is returned as it is, after one scan of it per word instead of four regex passes
#: (which took 6 to 20 µs a string, on every value of every log event). Other text always
#: takes the passes: ignoring case, a regex also matches letters whose lowercase is not
#: ASCII's (the Kelvin sign for "k"), which the words would miss.
_TEXT_MARKERS = (
    "bearer",
    "signature",
    "basic",
    "secret",
    "assertion",
    "token",
    "password",
    "code=",
    "sig=",
    "skoid=",
    "sktid=",
    "eyj",
)


def redact_text(text: str) -> str:
    if text.isascii():
        lowered = text.lower()
        if not any(marker in lowered for marker in _TEXT_MARKERS):
            return text
    for pattern, replacement in _TEXT_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


@functools.lru_cache(maxsize=4096)
def _is_secret_key(key: str) -> bool:
    """`SECRET_KEY` matched once per key: a log line's dozen keys are the same on every line
    (the search was a fifth of a line's cost)."""
    return SECRET_KEY.search(key) is not None


def redact_value(value: Any, key: str | None = None) -> Any:
    """A copy of ``value`` with every secret replaced by ``[redacted]``."""
    if key is not None and _is_secret_key(key) and value not in (None, "", {}, []):
        return REDACTED
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return {k: redact_value(v, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact_value(v) for v in value)
    return value


def redact_processor(_logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """structlog processor: redact every key and value of the event."""
    return {
        key: value if key in ("level", "timestamp", "logger") else redact_value(value, key)
        for key, value in event_dict.items()
    }


def _shared_processors() -> list[Any]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        redact_processor,
    ]


def configure_logging(
    *, format: str = "auto", level: str = "info", stream: TextIO | None = None
) -> None:
    """Configure structlog and the standard library's logging; call once per process."""
    stream = stream or sys.stderr
    if format == "auto":
        format = "console" if stream.isatty() else "json"
    numeric_level = logging.getLevelNamesMapping().get(level.upper())
    if numeric_level is None:
        raise ValueError(f"unknown log level {level!r}: use debug, info, warning or error")
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=stream.isatty())
        if format == "console"
        else structlog.processors.JSONRenderer(sort_keys=False)
    )
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *_shared_processors(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.ExtraAdder(), *_shared_processors()],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric_level)
    # Libraries chatty at INFO stay quiet unless asked for by debug.
    for name in ("urllib3", "msal", "alembic", "apscheduler"):
        logging.getLogger(name).setLevel(max(numeric_level, logging.WARNING))
