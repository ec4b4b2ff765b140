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

Given an attrs payload class (``typed``), the OData paginator decodes each page's bytes
straight into the class's typed form (`translation.typed_form`), about two thirds of the cost
of decoding the JSON and reading each payload from it. A page with an item the typed form
refuses, or with a removal of a delta round (``@removed``), comes as JSON as without.
"""

from __future__ import annotations

import contextvars
import functools
import json
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import attrs
import msgspec
import requests

from .errors import PagingLoop, UnexpectedResponse
from .http import HttpClient, redact_url
from .translation import TypedMisfit, typed_form

R = TypeVar("R")


@attrs.frozen
class ODataPage:
    """One page. ``items``: its items as JSON objects. ``typed``: the same items in the typed
    form `odata_pages` was asked for, when every one of them fitted it (else ``None``); the
    JSON objects are then decoded from the page's bytes only if asked for."""

    _items: list[Any] | None = attrs.field(alias="items")
    next_link: str | None
    delta_link: str | None
    url: str
    typed: list[Any] | None = None
    _content: bytes | None = attrs.field(default=None, alias="content", repr=False, eq=False)

    @property
    def items(self) -> list[Any]:
        if self._items is None:
            assert self._content is not None
            object.__setattr__(self, "_items", json.loads(self._content)["value"])
        return self._items  # type: ignore[return-value]

    def translated(self, translate: Callable[[Any], R]) -> list[R]:
        """``translate`` (a `translation.translator`'s, with its context) of each item: of
        the typed items when the page has them, or, should one of them make no record
        (`TypedMisfit`), of the JSON items, as of a page without; the results are the
        same."""
        if self.typed is not None:
            try:
                return [translate(item) for item in self.typed]
            except TypedMisfit:
                pass
        return [translate(item) for item in self.items]


@attrs.frozen
class _TypedBody:
    """A page decoded into a typed form, with its bytes."""

    envelope: Any
    content: bytes


@functools.cache
def _typed_decoder(cls: type) -> msgspec.json.Decoder[Any] | None:
    """A decoder of an OData page whose items are ``cls``'s typed form; ``None`` when it has
    none. An item's ``@removed`` (a delta round's removal) is kept, so that such a page can
    be left to the JSON way, which treats removals as such."""
    form = typed_form(cls)
    if form is None:
        return None
    item = msgspec.defstruct(
        f"{form.__name__}InPage",
        [("removed", Any, msgspec.field(default=msgspec.UNSET, name="@removed"))],
        bases=(form,),
        kw_only=True,
    )
    page = msgspec.defstruct(
        f"{form.__name__}Page",
        [
            ("value", list[item]),  # type: ignore[valid-type]
            ("next_link", str | None, msgspec.field(default=None, name="@odata.nextLink")),
            ("delta_link", str | None, msgspec.field(default=None, name="@odata.deltaLink")),
        ],
    )
    return msgspec.json.Decoder(page)


def _get_page(
    client: HttpClient,
    url: str,
    params: Mapping[str, Any] | None,
    headers: Mapping[str, str] | None,
    decoder: msgspec.json.Decoder[Any] | None,
) -> Any:
    """The page at ``url``: its JSON, or with a ``decoder`` a `_TypedBody` when every item
    fits (JSON otherwise)."""
    if decoder is None:
        return client.json("GET", url, params=params, headers=headers)
    response = client.request("GET", url, params=params, headers=headers)
    if _utf8(response):
        try:
            envelope = decoder.decode(response.content)
        except msgspec.MsgspecError:
            pass  # not every item fits (or not JSON): the JSON way says what it is
        else:
            if all(item.removed is msgspec.UNSET for item in envelope.value):
                return _TypedBody(envelope, response.content)
    return client.decoded(response, "GET", url)


def _utf8(response: requests.Response) -> bool:
    """Whether the answer's text is UTF-8, which the typed decoding reads (JSON's own
    encoding, and Graph's)."""
    encoding = (response.encoding or "utf-8").lower().replace("-", "").replace("_", "")
    return encoding == "utf8"


#: The threads that fetch the next pages; idle ones cost nothing, and each fetch is short.
_READ_AHEAD = ThreadPoolExecutor(max_workers=64, thread_name_prefix="halo-read-ahead")


def odata_pages(
    client: HttpClient,
    url: str,
    *,
    params: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
    read_ahead: bool = True,
    typed: type | None = None,
) -> Iterator[ODataPage]:
    """Every page of an OData collection or delta round, starting at ``url``.

    ``params`` go with the first request only: a next link carries them already. With
    ``read_ahead`` the next page is requested before this one is handed over; its errors
    are raised when the caller asks for it, as without. With ``typed`` (an attrs payload
    class), pages whose items all fit its typed form come with them (`ODataPage.typed`).
    """
    decoder = None if typed is None else _typed_decoder(typed)
    seen: set[str] = set()
    current: str | None = url
    first = True
    ahead: Future[Any] | None = None
    while current is not None:
        if ahead is not None:
            body = ahead.result()
        else:
            body = _get_page(client, current, params if first else None, headers, decoder)
        if isinstance(body, _TypedBody):
            envelope = body.envelope
            page = ODataPage(
                items=None,
                next_link=envelope.next_link,
                delta_link=envelope.delta_link,
                url=current,
                typed=envelope.value,
                content=body.content,
            )
        elif not isinstance(body, dict) or not isinstance(body.get("value"), list):
            raise UnexpectedResponse(
                "expected an OData collection (an object with a 'value' list)",
                method="GET",
                url=redact_url(current),
            )
        else:
            page = ODataPage(
                items=body["value"],
                next_link=body.get("@odata.nextLink"),
                delta_link=body.get("@odata.deltaLink"),
                url=current,
            )
        next_link, delta_link = page.next_link, page.delta_link
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
                contextvars.copy_context().run,
                _get_page,
                client,
                next_link,
                None,
                headers,
                decoder,
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
