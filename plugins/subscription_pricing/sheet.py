"""Microsoft's license-based (new commerce) price sheet: download it, read it as `Price` rows.

Partner Center developer/get-a-price-sheet.md (``kvamseek/partner-center`` copy at 85eb3c40):

    GET https://api.partner.microsoft.com/v1.0/sales/pricesheets(Market='{market}',
        PricesheetView='updatedlicensebased')/$value?timeline=current|future

answers "the price list as a file stream ... either a .csv file or a zip compressed version
of the .csv" (the zip when the request says ``Accept-Encoding: deflate``, which we always
do). ``timeline=future`` answers 404 when no changes are planned. The file is spooled to a
temporary file (in memory up to a few MB, on disk beyond) and read row by row from there,
through `zipfile` when it is a zip: never held whole in memory.

What the page's sample shows, and how it is read:

* every field quoted; columns ``ProductTitle, ProductId, SkuId, SkuTitle, Publisher,
  SkuDescription, UnitOfMeasure, TermDuration, BillingPlan, Market, Currency, UnitPrice,
  PricingTierRangeMin, PricingTierRangeMax, EffectiveStartDate, EffectiveEndDate, Tags,
  ERP Price`` — found by name (spaces, quotes and case ignored), not by position;
* the header's last column is written ``"ERP Price“``, closed by a curly quote: a plain CSV
  reader would run the header into the first row. The header line is read on its own and a
  curly quote opening or closing a field is taken for a straight one;
* dates as ``M/D/YYYY h:mm:ss AM`` (``2/1/2019 12:00:00 AM``), taken as UTC (the page names
  no zone); ISO 8601 dates are read too, and ``M/D/YYYY H:MM`` (``2/1/2023 0:00``,
  ``11/30/9999 23:59``), the form of the field table of partner-center/pricing-and-offers.md;
* prices as decimal strings (``115.2``), read as `Decimal`; an empty tier bound is none.

What a price is (partner-center/pricing-and-offers.md, *New commerce terms and billing
frequencies*): "The UnitPrice amount is for the term being purchased. If a partner purchases
an annual term with monthly pricing, they'll be billed one-twelfth the total amount each
monthly billing period." The core prices a subscription by one billing period of its plan,
so each row's ``UnitPrice`` is divided into the billing periods of its ``TermDuration``
(`period_price`: 240 for P1Y billed Monthly is 20 a month; 720 for P3Y billed Annual is 240
a year); the sheet's own figure stays in the row's ``termPrice`` attribute. A row whose term
or plan cannot be read that way is a `RecordError`: a price a billing period cannot be had
from it.

A row that cannot be read is yielded as `RecordError` naming its line; a header missing a
column the prices need fails the whole sheet.
"""

from __future__ import annotations

import contextlib
import csv
import io
import re
import tempfile
import time
import uuid
import zipfile
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import IO, Any

import requests
import structlog

from halo_integrator_core import Price, RecordError
from halo_integrator_core.config import EndpointSettings
from halo_integrator_core.http import HttpClient
from halo_integrator_core.pricing import period_price, term_months

log = structlog.get_logger(__name__)

VIEW = "updatedlicensebased"
#: Kept in memory up to this size, then on disk.
SPOOL_BYTES = 8 * 1024 * 1024
CHUNK_BYTES = 64 * 1024
#: A download that breaks off mid-file is started again this many times in all.
DOWNLOAD_ATTEMPTS = 3

#: Our name of each column → its name in the page's sample (found by `_column`).
COLUMNS = {
    "product_title": "ProductTitle",
    "product_id": "ProductId",
    "sku_id": "SkuId",
    "sku_title": "SkuTitle",
    "publisher": "Publisher",
    "sku_description": "SkuDescription",
    "unit_of_measure": "UnitOfMeasure",
    "term_duration": "TermDuration",
    "billing_plan": "BillingPlan",
    "market": "Market",
    "currency": "Currency",
    "unit_price": "UnitPrice",
    "tier_min": "PricingTierRangeMin",
    "tier_max": "PricingTierRangeMax",
    "start": "EffectiveStartDate",
    "end": "EffectiveEndDate",
    "tags": "Tags",
    "erp_price": "ERP Price",
}
REQUIRED = ("product_id", "sku_id", "term_duration", "billing_plan", "currency", "unit_price")
DATE_FORMATS = (
    "%m/%d/%Y %I:%M:%S %p",
    "%m/%d/%Y %H:%M:%S",
    "%m/%d/%Y %I:%M %p",
    "%m/%d/%Y %H:%M",
    "%m/%d/%Y",
)

_QUOTES = "\"'\u201c\u201d\u2018\u2019\ufeff"
_OPENING_CURLY = re.compile(r"(^|,)(\s*)[\u201c\u201d]")
_CLOSING_CURLY = re.compile(r"[\u201c\u201d](\s*)(?=,|$)")


class SheetError(Exception):
    """The file Microsoft sent is not a price sheet this module can read."""


def sheet_url(endpoints: EndpointSettings, market: str) -> str:
    base = endpoints.url("partner_api").rstrip("/")
    return f"{base}/v1.0/sales/pricesheets(Market='{market}',PricesheetView='{VIEW}')/$value"


@contextlib.contextmanager
def downloaded(
    http: HttpClient, url: str, *, params: dict[str, str], headers: dict[str, str]
) -> Iterator[IO[bytes]]:
    """The sheet's bytes in a spooled temporary file, read from the start.

    The client retries what fails before the answer starts; a transfer that breaks off
    later is started again, a bounded number of times.
    """
    for attempt in range(1, DOWNLOAD_ATTEMPTS + 1):
        response = http.request(
            "GET", url, params=params, headers=headers, stream=True, allow_redirects=True
        )
        with response, tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES) as spool:
            try:
                size = 0
                for chunk in response.iter_content(CHUNK_BYTES):
                    spool.write(chunk)
                    size += len(chunk)
            except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as exc:
                if attempt == DOWNLOAD_ATTEMPTS:
                    raise SheetError(
                        f"the price sheet's download broke off {DOWNLOAD_ATTEMPTS} times "
                        f"(last: {type(exc).__name__}); the next run will try again"
                    ) from exc
                log.warning("pricing.download_retry", attempt=attempt, error=type(exc).__name__)
                time.sleep(min(2**attempt, 10))
                continue
            log.info(
                "pricing.sheet_downloaded",
                bytes=size,
                content_type=response.headers.get("Content-Type"),
                disposition=response.headers.get("Content-Disposition"),
            )
            spool.seek(0)
            yield spool
            return


def request_headers(bearer: str) -> dict[str, str]:
    """Partner REST headers (developer/headers.md), asking for the zip."""
    return {
        "Authorization": f"Bearer {bearer}",
        "Accept-Encoding": "deflate",
        "MS-RequestId": str(uuid.uuid4()),
        "MS-CorrelationId": str(uuid.uuid4()),
    }


def read_sheet(data: IO[bytes], market: str) -> Iterator[Price | RecordError]:
    """The rows of a sheet file (CSV, or a zip holding CSV files)."""
    head = data.read(4)
    data.seek(0)
    if head.startswith(b"PK\x03\x04"):
        try:
            archive = zipfile.ZipFile(data)
        except zipfile.BadZipFile as exc:
            raise SheetError(f"the price sheet is a damaged zip file: {exc}") from None
        with archive:
            members = [m for m in archive.infolist() if not m.is_dir()]
            sheets = [m for m in members if m.filename.lower().endswith(".csv")] or members
            if not sheets:
                raise SheetError("the price sheet's zip file holds no file")
            for member in sheets:
                with archive.open(member) as raw:
                    yield from read_csv(raw, market, name=member.filename)
        return
    yield from read_csv(data, market, name="sheets.csv")


def read_csv(raw: IO[bytes], market: str, *, name: str) -> Iterator[Price | RecordError]:
    text = io.TextIOWrapper(raw, encoding="utf-8-sig", errors="replace", newline="")
    try:
        first = text.readline()
        if not first.strip():
            return  # an empty file: no rows
        names = header_names(first)
        index = _column_index(names, name)
        reader = csv.reader(text)
        for values in reader:
            if not any(value.strip() for value in values):
                continue
            row = _row(values, index, len(names), market)
            if isinstance(row, RecordError):
                # The header is line 1 of the file; the reader counts from the line after it.
                row = RecordError(
                    entity_id=row.entity_id,
                    reason=f"{name} line {reader.line_num + 1}: {row.reason}",
                )
            yield row
    finally:
        text.detach()  # leave the file to its owner


def header_names(line: str) -> list[str]:
    """The column names of the header line, its curly quotes taken for straight ones."""
    line = line.rstrip("\r\n")
    line = _OPENING_CURLY.sub(r'\1\2"', line)
    line = _CLOSING_CURLY.sub(r'"\1', line)
    return next(csv.reader([line]))


def _column(name: str) -> str:
    return "".join(ch for ch in name if ch not in _QUOTES and not ch.isspace()).casefold()


def _column_index(names: list[str], source: str) -> dict[str, int]:
    positions = {_column(name): at for at, name in enumerate(names)}
    index = {
        ours: positions[_column(theirs)]
        for ours, theirs in COLUMNS.items()
        if _column(theirs) in positions
    }
    missing = [COLUMNS[ours] for ours in REQUIRED if ours not in index]
    if missing:
        raise SheetError(
            f"{source} is not a license-based price sheet: its header lacks "
            f"{', '.join(missing)} (it has: {', '.join(names) or 'nothing'})"
        )
    return index


def sheet_date(text: str) -> datetime | None:
    """``2/1/2019 12:00:00 AM`` (or an ISO 8601 date), in UTC; ``None`` for empty."""
    text = text.strip()
    if not text:
        return None
    for fmt in DATE_FORMATS:
        try:
            return datetime.strptime(text, fmt).replace(tzinfo=UTC)
        except ValueError:
            continue
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))  # ValueError if not
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def sheet_decimal(text: str) -> Decimal | None:
    text = text.strip()
    if not text:
        return None
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise ValueError(f"{text!r} is not a decimal number") from None
    if not value.is_finite():
        raise ValueError(f"{text!r} is not a decimal number")
    return value


def _row(values: list[str], index: dict[str, int], width: int, market: str) -> Price | RecordError:
    def get(name: str) -> str:
        at = index.get(name)
        return values[at].strip() if at is not None and at < len(values) else ""

    product, sku = get("product_id"), get("sku_id")
    entity = f"{product}:{sku}" if product else None
    problems: list[str] = []
    if len(values) != width:
        problems.append(f"{len(values)} fields where the header has {width}")
    for name in ("product_id", "sku_id", "term_duration", "currency", "unit_price"):
        if not get(name):
            problems.append(f"no {COLUMNS[name]}")
    parsed: dict[str, Any] = {}
    for name, parse in (
        ("unit_price", sheet_decimal),
        ("erp_price", sheet_decimal),
        ("tier_min", sheet_decimal),
        ("tier_max", sheet_decimal),
        ("start", sheet_date),
        ("end", sheet_date),
    ):
        try:
            parsed[name] = parse(get(name))
        except ValueError as exc:
            parsed[name] = None
            problems.append(f"{COLUMNS[name]}: {exc}")
    if parsed["unit_price"] is not None and parsed["unit_price"] < 0:
        problems.append(f"{COLUMNS['unit_price']}: {parsed['unit_price']} is negative")
    months = None
    if get("term_duration"):
        try:
            months = term_months(get("term_duration"))
        except ValueError as exc:
            problems.append(f"{COLUMNS['term_duration']}: {exc}")
    unit_price = None
    if months is not None and parsed["unit_price"] is not None:
        try:
            unit_price = period_price(parsed["unit_price"], months, get("billing_plan") or None)
        except ValueError as exc:
            problems.append(f"{COLUMNS['billing_plan']}: {exc}")
    for bound in ("tier_min", "tier_max"):
        value = parsed[bound]
        if value is not None and value != value.to_integral_value():
            problems.append(f"{COLUMNS[bound]}: {value} is not a whole number of seats")
    if problems or unit_price is None:
        return RecordError(entity_id=entity, reason="; ".join(problems))
    return Price(
        market=(get("market") or market).upper(),
        product_id=product,
        sku_id=sku,
        term_duration=get("term_duration"),
        billing_plan=get("billing_plan") or None,
        currency=get("currency").upper(),
        unit_price=unit_price,
        effective_start=parsed["start"],
        effective_end=parsed["end"],
        tier_minimum=int(parsed["tier_min"]) if parsed["tier_min"] is not None else None,
        tier_maximum=int(parsed["tier_max"]) if parsed["tier_max"] is not None else None,
        name=get("sku_title") or get("product_title") or None,
        attributes={
            "productTitle": get("product_title") or None,
            "skuTitle": get("sku_title") or None,
            "unitOfMeasure": get("unit_of_measure") or None,
            "tags": get("tags") or None,
            # The sheet's prices as it states them: of the whole term.
            "termPrice": str(parsed["unit_price"]),
            "erpPrice": str(parsed["erp_price"]) if parsed["erp_price"] is not None else None,
        },
    )
