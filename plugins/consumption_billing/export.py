"""Graph's partner billing export: start, wait, read the manifest, stream the blobs.

The flow of ``microsoft.graph.partners.billing`` (``microsoftgraph/microsoft-graph-docs-
contrib``, ``api-reference/v1.0``): POST ``reports/partners/billing/usage/unbilled/export``
(``currencyCode``, ``billingPeriod`` current or last, ``attributeSet``) or ``.../billed/export``
(``invoiceId``, ``attributeSet``) → ``202 Accepted`` with ``Location``, an operation → GET it
(always ``200``) until its ``status`` is ``succeeded`` (``exportSuccessOperation``, whose
``resourceLocation`` is the manifest) or ``failed`` (``failedOperation``: ``No data
available``, code ``5000``, when there is no usage); while ``running``, wait as long as its
``Retry-After`` says, within a bounded total → GET the manifest → GET each blob,
``{rootDirectory}/{name}?{sasToken}``: a gzip file of JSON Lines, one usage record a line.

The manifest page gives ``dataFormat`` as ``compressedJSONLines``, its example as
``compressedJSON``: both are read, and so is a blob that turns out to hold one JSON array.
The manifest page's example names the billing month in its ``rootDirectory``
(``.../BillingMonth=202310/InvoiceId=G031809528/...``); `Manifest.billing_month` is that month,
or ``None`` when the directory does not say.

A blob is downloaded to a temporary file (resumed with a ``Range`` request if the connection
drops) and read from there a line at a time: neither the blob nor its rows are ever whole
in memory. The SAS token goes only into the blob URL, which the request log and the logs
record with its signature removed; no error this module raises quotes it.
"""

from __future__ import annotations

import gzip
import io
import json
import re
import tempfile
from collections.abc import Callable, Iterator, Mapping
from decimal import Decimal
from typing import IO, Any
from urllib.parse import quote

import attrs
import requests

from halo_integrator_core.errors import HttpError, UnexpectedResponse
from halo_integrator_core.http import HttpClient, parse_retry_after

EXPORTS = "/v1.0/reports/partners/billing/usage"
DATA_FORMATS = {"compressedjson", "compressedjsonlines"}
NO_DATA_CODE = "5000"
CHUNK = 64 * 1024
#: Times a blob download is resumed after its connection drops.
RESUMES = 5
_BILLING_MONTH = re.compile(r"/BillingMonth=(\d{4})(0[1-9]|1[0-2])(?=/|$)", re.IGNORECASE)


class ExportError(Exception):
    """An export Microsoft could not give (failed, timed out, or malformed)."""


@attrs.frozen
class NoData:
    """The operation failed because there is no usage to export ("No data available")."""

    message: str


@attrs.frozen
class Manifest:
    id: str
    data_format: str
    root_directory: str
    sas_token: str = attrs.field(repr=False)
    blobs: tuple[str, ...]
    etag: str | None = None

    @property
    def billing_month(self) -> str | None:
        """The billing month (``YYYY-MM``) the export's directory names, if it names one."""
        match = _BILLING_MONTH.search(self.root_directory.split("?", 1)[0])
        return f"{match.group(1)}-{match.group(2)}" if match else None

    def blob_url(self, name: str) -> str:
        return f"{self.root_directory.rstrip('/')}/{quote(name, safe='/=')}?{self.sas_token.lstrip('?')}"


@attrs.frozen
class Record:
    """One usage record of a blob, its keys lower-cased (the attribute names' case varies)."""

    blob: str
    line: int
    values: dict[str, Any]

    @property
    def where(self) -> str:
        return f"{self.blob} line {self.line}"


@attrs.frozen
class BadRecord:
    blob: str
    line: int
    reason: str

    @property
    def where(self) -> str:
        return f"{self.blob} line {self.line}"


class PartnerBillingExports:
    """One partner tenant's exports, with the GDAP app's Graph token (``headers``)."""

    def __init__(
        self,
        http: HttpClient,
        graph: str,
        headers: Callable[[], Mapping[str, str]],
        *,
        timeout_seconds: float,
        poll_seconds: float,
    ) -> None:
        self.http = http
        self.graph = graph.rstrip("/")
        self.headers = headers
        self.timeout_seconds = timeout_seconds
        self.poll_seconds = poll_seconds

    # -- starting ----------------------------------------------------------------------------

    def start_unbilled(self, currency: str, period: str, attribute_set: str) -> str:
        body = {"currencyCode": currency, "billingPeriod": period, "attributeSet": attribute_set}
        return self._start(f"{self.graph}{EXPORTS}/unbilled/export", body)

    def start_billed(self, invoice_id: str, attribute_set: str) -> str:
        body = {"invoiceId": invoice_id, "attributeSet": attribute_set}
        return self._start(f"{self.graph}{EXPORTS}/billed/export", body)

    def _start(self, url: str, body: dict[str, str]) -> str:
        response = self.http.request("POST", url, json=body, headers=dict(self.headers()))
        location = response.headers.get("Location")
        if not location:
            raise UnexpectedResponse(
                f"the export was accepted ({response.status_code}) without a Location to poll",
                method="POST",
                url=url,
                status=response.status_code,
            )
        return location

    # -- waiting ---------------------------------------------------------------------------

    def wait(self, operation_url: str) -> str | NoData:
        """The manifest URL once the operation succeeds, or `NoData`; raises `ExportError`
        if it fails otherwise or is still running after ``timeout_seconds``."""
        waited = 0.0
        while True:
            response = self.http.request("GET", operation_url, headers=dict(self.headers()))
            operation = _json_object(response, operation_url)
            status = str(_get(operation, "status") or "").lower()
            kind = str(operation.get("@odata.type") or "").lower()
            if status == "succeeded" or kind.endswith("exportsuccessoperation"):
                return _manifest_location(operation, operation_url)
            if status == "failed" or kind.endswith("failedoperation"):
                error = _get(operation, "error") or {}
                message = str(_get(error, "message") or "the export failed")
                code = str(_get(error, "code") or "")
                if code == NO_DATA_CODE or "no data" in message.lower():
                    return NoData(message)
                raise ExportError(
                    f"Microsoft could not prepare the export: {message} (code {code or 'none'})"
                )
            # running, notStarted, or a status a later API version adds: wait and ask again.
            wait = parse_retry_after(response.headers.get("Retry-After"))
            wait = self.poll_seconds if wait is None else max(wait, 1.0)
            remaining = self.timeout_seconds - waited
            if remaining <= 0:
                minutes = round(self.timeout_seconds / 60, 1)
                raise ExportError(
                    f"Microsoft was still preparing the export after {minutes:g} minutes "
                    "(export_timeout_minutes): the next run asks again"
                )
            wait = min(wait, remaining)
            self.http.sleep(wait)
            waited += wait

    # -- the manifest and its blobs --------------------------------------------------------

    def manifest(self, url: str) -> Manifest:
        response = self.http.request("GET", url, headers=dict(self.headers()))
        body = _json_object(response, url)
        return manifest_of(body, url)

    def records(self, manifest: Manifest) -> Iterator[Record | BadRecord]:
        """Every record of every blob, in manifest order, one at a time."""
        for name in manifest.blobs:
            with tempfile.TemporaryFile(prefix="halo-billing-") as spool:
                self._download(manifest, name, spool)
                spool.seek(0)
                yield from read_records(spool, name)

    def _download(self, manifest: Manifest, name: str, out: IO[bytes]) -> None:
        url = manifest.blob_url(name)
        received = 0
        for attempt in range(RESUMES + 1):
            headers = {"x-ms-version": "2021-08-06"}
            if received:
                headers["Range"] = f"bytes={received}-"
            response = self.http.request("GET", url, headers=headers, stream=True)
            if received and response.status_code != 206:
                # The server sent the whole blob again: start the file over.
                out.seek(0)
                out.truncate()
                received = 0
            try:
                for chunk in response.iter_content(CHUNK):
                    out.write(chunk)
                    received += len(chunk)
                return
            except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as exc:
                if attempt == RESUMES:
                    raise ExportError(
                        f"blob {name} could not be read to its end after {RESUMES} resumed "
                        f"downloads ({type(exc).__name__})"
                    ) from None
            finally:
                response.close()


def manifest_of(body: Mapping[str, Any], url: str = "") -> Manifest:
    """A manifest from its JSON, checked: a format this module reads, every blob listed."""
    data_format = str(_get(body, "dataFormat") or "")
    if data_format.lower() not in DATA_FORMATS:
        raise ExportError(
            f"the manifest's dataFormat is {data_format!r}: this version reads compressedJSON "
            "and compressedJSONLines"
        )
    root, sas = _get(body, "rootDirectory"), _get(body, "sasToken")
    if not isinstance(root, str) or not root or not isinstance(sas, str) or not sas:
        raise ExportError("the manifest has no rootDirectory or no sasToken to read its blobs with")
    blobs = tuple(
        str(_get(blob, "name"))
        for blob in (_get(body, "blobs") or [])
        if isinstance(blob, Mapping) and _get(blob, "name")
    )
    count = _get(body, "blobCount")
    if isinstance(count, int) and count != len(blobs):
        raise ExportError(
            f"the manifest counts {count} blobs but lists {len(blobs)}: the export cannot be "
            "read whole; the next run asks again"
        )
    return Manifest(
        id=str(_get(body, "id") or ""),
        data_format=data_format,
        root_directory=root,
        sas_token=sas,
        blobs=blobs,
        etag=_get(body, "eTag"),
    )


def read_records(stream: IO[bytes], name: str) -> Iterator[Record | BadRecord]:
    """The records of one blob: gzip or not, JSON Lines or one JSON array, streamed."""
    buffered = stream if hasattr(stream, "peek") else io.BufferedReader(stream)  # type: ignore[arg-type]
    magic = buffered.peek(2)[:2]  # type: ignore[union-attr]
    raw: IO[bytes] = (
        gzip.GzipFile(fileobj=buffered, mode="rb") if magic == b"\x1f\x8b" else buffered
    )  # type: ignore[assignment]
    text = io.TextIOWrapper(raw, encoding="utf-8-sig", newline=None)
    first = _skip_blank(text)
    if first == "[":
        yield from _array_records(text, name)
        return
    for number, line in enumerate(_lines(text, first), start=1):
        line = line.strip()
        if not line:
            continue
        try:
            value = json.loads(line, parse_float=Decimal)
        except ValueError as exc:
            yield BadRecord(name, number, f"not a JSON line: {exc}")
            continue
        if not isinstance(value, dict):
            yield BadRecord(name, number, f"a JSON {type(value).__name__}, not a record")
            continue
        yield Record(name, number, {str(k).lower(): v for k, v in value.items()})


def _skip_blank(text: io.TextIOWrapper) -> str:
    """The first character that is not white space ('' at the end)."""
    while True:
        char = text.read(1)
        if not char or not char.isspace():
            return char


def _lines(text: io.TextIOWrapper, first: str) -> Iterator[str]:
    if not first:
        return
    yield first + text.readline()
    yield from text


def _array_records(text: io.TextIOWrapper, name: str) -> Iterator[Record | BadRecord]:
    """The items of a JSON array read incrementally (a blob that is one array)."""
    decoder = json.JSONDecoder(parse_float=Decimal)
    buffer, position, number = "", 0, 0
    while True:
        buffer = buffer[position:].lstrip(" \t\r\n,")
        position = 0
        if buffer.startswith("]"):
            return
        try:
            value, position = decoder.raw_decode(buffer)
        except ValueError:
            more = text.read(CHUNK)
            if not more:
                if buffer.strip():
                    yield BadRecord(name, number + 1, "the JSON array ends mid-record")
                return
            buffer += more
            continue
        number += 1
        if isinstance(value, dict):
            yield Record(name, number, {str(k).lower(): v for k, v in value.items()})
        else:
            yield BadRecord(name, number, f"a JSON {type(value).__name__}, not a record")


def _json_object(response: requests.Response, url: str) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise UnexpectedResponse(
            "expected a JSON object", method="GET", url=url, status=response.status_code
        )
    return body


def _get(body: Any, key: str) -> Any:
    """``body[key]``, ignoring the case of the key (the APIs' casing varies)."""
    if not isinstance(body, Mapping):
        return None
    if key in body:
        return body[key]
    lowered = key.lower()
    return next((value for name, value in body.items() if str(name).lower() == lowered), None)


def _manifest_location(operation: Mapping[str, Any], url: str) -> str:
    link = _get(operation, "resourceLocation@odata.navigationLink")
    if isinstance(link, str) and link:
        return link
    location = _get(operation, "resourceLocation")
    if isinstance(location, str) and location:
        return location
    raise ExportError("the export succeeded but names no manifest (resourceLocation)")


__all__ = [
    "BadRecord",
    "ExportError",
    "HttpError",
    "Manifest",
    "NoData",
    "PartnerBillingExports",
    "Record",
    "manifest_of",
    "read_records",
]
