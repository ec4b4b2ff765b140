"""HTML pages of the HTTP server: one layout, everything escaped, no script.

Modules render their pages with `page` too, so that every page carries the one stylesheet
the Content-Security-Policy allows (by its hash): no inline script or style of anyone else's
ever runs, whatever a tenant or user name holds.
"""

from __future__ import annotations

import base64
import hashlib
import html
from collections.abc import Iterable, Sequence
from typing import Any

from werkzeug.wrappers import Response

STYLE = (
    "body{font:15px/1.45 system-ui,sans-serif;margin:2rem auto;max-width:72rem;padding:0 1rem;"
    "color:#1d2125}h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem}"
    "table{border-collapse:collapse;width:100%;margin:.5rem 0}"
    "th,td{border-bottom:1px solid #dde1e6;padding:.3rem .5rem;text-align:left;"
    "vertical-align:top}th{background:#f3f5f7}code{font-size:.9em}"
    ".bad{color:#a4262c}.good{color:#107c10}.note{color:#5c6670}"
    "form{display:inline}button{font:inherit;padding:.15rem .6rem}"
)
_STYLE_HASH = base64.b64encode(hashlib.sha256(STYLE.encode()).digest()).decode()


def content_security_policy(*, form_action: Iterable[str] = ("'self'",)) -> str:
    """The policy of our pages: nothing but our stylesheet; forms post to ``form_action``.

    A module whose form redirects elsewhere (to a sign-in page) names that origin in
    ``form_action``, since browsers check the redirect of a form against it too.
    """
    return (
        f"default-src 'none'; style-src 'sha256-{_STYLE_HASH}'; img-src 'self'; "
        f"form-action {' '.join(form_action)}; frame-ancestors 'none'; base-uri 'none'"
    )


def esc(value: Any) -> str:
    """``value`` as HTML text (``-`` for ``None``)."""
    return "-" if value is None else html.escape(str(value), quote=True)


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], *, empty: str) -> str:
    """An HTML table; ``rows`` hold HTML already escaped (use `esc` on every value)."""
    rendered = ["<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows]
    if not rendered:
        return f"<p class='note'>{esc(empty)}</p>"
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rendered)}</tbody></table>"


def page(
    title: str,
    body: str,
    *,
    status: int = 200,
    headers: Iterable[tuple[str, str]] = (),
) -> Response:
    """A whole page: ``title`` is text (escaped here), ``body`` is HTML already escaped."""
    document = (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{esc(title)} · halo-integrator</title><style>{STYLE}</style></head>"
        f"<body><h1>{esc(title)}</h1>{body}</body></html>"
    )
    return Response(
        document, status=status, headers=list(headers), content_type="text/html; charset=utf-8"
    )


def message_page(title: str, text: str, status: int = 200) -> Response:
    """A page of one paragraph of text."""
    return page(title, f"<p>{esc(text)}</p>", status=status)


__all__ = ["content_security_policy", "esc", "message_page", "page", "table"]
