"""Paginators, one per link style, offered to plugins by the core.

- OData (Microsoft Graph): follow ``@odata.nextLink`` until a page carries
  ``@odata.deltaLink`` or no next link; pages may be empty and still carry a next link.
- Partner Center: follow ``links.next.uri`` (relative, with or without ``/v1``), sending
  every header the link lists (the ``MS-ContinuationToken``).

Both yield one page at a time and stop with `PagingLoop` when a link comes back that was
already followed. The OData paginator reads one page ahead: while the caller works on a
page, the next is already on its way (on a thread of its own, in the caller's log context,
so the request log and the per-tenant pacing see it as the caller's). A sync's work on a
page then costs no wall time when Microsoft is the slower side, and at most two pages are
held at once.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import attrs

from .errors import PagingLoop, UnexpectedResponse
from .http import HttpClient, redact_url


@attrs.frozen
class ODataPage:
    items: list[dict[str, Any]]
    next_link: str | None
    delta_link: str | None
    url: str


#: The threads that fetch the next pages; idle ones cost nothing, and each fetch is short.
_READ_AHEAD = ThreadPoolExecutor(max_workers=64, thread_name_prefix="halo-read-ahead")


def odata_pages(
    client: HttpClient,
    url: str,
    *,
    params: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
    read_ahead: bool = True,
) -> Iterator[ODataPage]:
    """Every page of an OData collection or delta round, starting at ``url``.

    ``params`` go with the first request only: a next link carries them already. With
    ``read_ahead`` the next page is requested before this one is handed over; its errors
    are raised when the caller asks for it, as without.
    """
    seen: set[str] = set()
    current: str | None = url
    first = True
    ahead: Future[Any] | None = None
    while current is not None:
        if ahead is not None:
            body = ahead.result()
        else:
            body = client.json("GET", current, params=params if first else None, headers=headers)
        if not isinstance(body, dict) or not isinstance(body.get("value"), list):
            raise UnexpectedResponse(
                "expected an OData collection (an object with a 'value' list)",
                method="GET",
                url=redact_url(current),
            )
        next_link = body.get("@odata.nextLink")
        delta_link = body.get("@odata.deltaLink")
        page = ODataPage(body["value"], next_link, delta_link, current)
        first, ahead = False, None
        if delta_link or not next_link:
            yield page
            return
        if next_link in seen or next_link == current:
            yield page
            raise PagingLoop(
                "the next link repeats one already followed",
                method="GET",
                url=redact_url(next_link),
            )
        if read_ahead:
            ahead = _READ_AHEAD.submit(
                contextvars.copy_context().run, client.json, "GET", next_link, headers=headers
            )
        yield page
        seen.add(current)
        current = next_link


@attrs.frozen
class PartnerCenterPage:
    items: list[dict[str, Any]]
    total_count: int | None
    url: str


def partner_center_pages(
    client: HttpClient,
    base_url: str,
    path: str,
    *,
    params: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
) -> Iterator[PartnerCenterPage]:
    """Every page of a Partner Center collection.

    ``base_url`` is the Partner Center host (``https://api.partnercenter.microsoft.com``);
    ``path`` the first page's path below it, e.g. ``/v1/customers``.
    """
    url = _join(base_url, path)
    request_headers = dict(headers or {})
    seen_tokens: set[str] = set()
    first = True
    while True:
        body = client.json("GET", url, params=params if first else None, headers=request_headers)
        if not isinstance(body, dict) or not isinstance(body.get("items"), list):
            raise UnexpectedResponse(
                "expected a Partner Center collection (an object with an 'items' list)",
                method="GET",
                url=redact_url(url),
            )
        yield PartnerCenterPage(body["items"], body.get("totalCount"), url)
        first = False
        next_link = (body.get("links") or {}).get("next")
        if not next_link or not next_link.get("uri"):
            return
        link_headers = {h["key"]: h["value"] for h in next_link.get("headers") or () if "key" in h}
        token = link_headers.get("MS-ContinuationToken")
        marker = f"{next_link['uri']}|{token}"
        if marker in seen_tokens:
            raise PagingLoop(
                "the continuation token repeats one already followed",
                method="GET",
                url=redact_url(next_link["uri"]),
            )
        seen_tokens.add(marker)
        url = _join(base_url, next_link["uri"])
        request_headers = {**(headers or {}), **link_headers}


def _join(base_url: str, link: str) -> str:
    """An absolute URL for a Partner Center link, which may lack the ``/v1`` prefix."""
    if link.startswith(("https://", "http://")):
        return link
    path = link if link.startswith("/") else f"/{link}"
    if not path.startswith(("/v1/", "/webhooks/")):
        path = "/v1" + path
    return base_url.rstrip("/") + path
