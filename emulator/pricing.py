"""The Partner pricing API (``https://api.partner.microsoft.com``) under ``/partnerapi``: price sheets.

``GET /partnerapi/v1.0/sales/pricesheets(Market='GB',PricesheetView='updatedlicensebased')/$value``
answers the new-commerce licence price list as a CSV file stream (or a zip holding it, when the
request's ``Accept-Encoding`` names ``deflate``), with ``timeline`` = ``current`` (default),
``history`` (with ``month=YYYYMM``) or ``future``.

Page followed: Partner Center developer/get-a-price-sheet.md (``kvamseek/partner-center`` copy at
85eb3c40). Rows: one for each SKU of `world.SKU_CATALOG` (the products of the generated
subscriptions) and each (term, billing plan) it is sold on — P1M billed monthly, P1Y billed
monthly, P1Y billed annually (P1M is never billed annually), and for Microsoft 365 E3 and
Business Premium also P3Y billed annually and triennially — in USD for US and, for GB, in
the six European currencies (CHF, DKK, EUR, GBP, NOK, SEK), plus a tiered product whose
price depends on the seat count (``PricingTierRangeMin``/``Max`` filled in). A one-year term
billed monthly costs 5% more a month than one billed annually (Microsoft's rule since April
2025); a one-month term 20% more.

Page followed for what the rows mean: partner-center/pricing-and-offers.md (the English copy
in the MicrosoftDocs/partner-center-pr.* repositories), *New commerce license-based pricing*:

* "The UnitPrice amount is for the term being purchased. If a partner purchases an annual
  term with monthly pricing, they'll be billed one-twelfth the total amount each monthly
  billing period": every ``UnitPrice`` (and ``ERP Price``) here is the price of the whole
  ``TermDuration`` — a P1Y row billed monthly states twelve months, a P3Y row billed
  annually thirty-six — never the charge of one billing period.
* "For European countries/regions (and ONLY for European countries/regions), these
  market-based price list files include pricing in all six supported European currencies
  (SEK, NOK, CHF, DKK, GBP, EUR)": the GB list has a row in each of them for every product,
  SKU, term and plan, the currencies of one price side by side in alphabetical order (so
  GBP is not the first a reader meets).

Also here, because price sheets are what needs it: Partner Center's
``GET /partnercenter/v1/relationships?relationship_type=IsIndirectResellerOf|
IsIndirectCloudSolutionProviderOf`` (developer/retrieve-a-list-of-indirect-resellers.md):
the indirect providers of a partner whose ``Partner.direct`` is false (one, "Emulated
Distributor"), none for a direct partner; App+User only, as the page says.

Choices where the docs are silent:

* The CSV copies the documented sample byte for byte in its form: every field quoted, lines ending
  in ``\\n``, the header's last column written ``"ERP Price“`` (a curly closing quote, as the
  page shows; ``emulator.state["pricesheet_straight_quote"] = True`` writes ``"ERP Price"``),
  dates as ``M/D/YYYY h:mm:ss AM``, prices as plain decimals (``115.2``, ``144``).
  UnitPrice is ERP less 20%, the ratio of the page's sample row.
* The price points of CHF, DKK, EUR, NOK and SEK are the GBP ones at the fixed rates of
  `EUROPEAN_RATES` (Microsoft sets each currency's own price point; the page gives none).
* Each list is one month's (``current``: the month of the world's clock; ``future``: the
  next; ``history``: the month asked), its rows dated from the month's first to its last
  second, priced with the `World.price_changes` in force at the month's start (a generated
  world plans `world.PLANNED_PRICE_CHANGES` for the month after it starts). ``future``
  answers 404 when no change starts next month ("there will be no future price list
  returned"), as the page says.
* An indirect (Tier 2) reseller (``Partner.direct`` false) gets 403 for price sheets; the
  page documents no answer for it.
* App-only tokens are refused with 401 (the page: "Application-only isn't yet supported";
  partners report ``401 Unauthorized: Invalid Authorization header``). The body shape of the
  pricing host's errors is not documented; ours is ``{"code": …, "message": …}``.
* Unknown market → 400; a view other than updatedlicensebased → 400 if it is not a documented
  view, 501 if it is one the emulator does not serve; ``timeline=history`` without a valid
  ``month`` → 400.
"""

from __future__ import annotations

import csv
import io
import re
import uuid
import zipfile
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from werkzeug.wrappers import Request, Response

from .app import (
    PARTNER_API,
    PARTNER_CENTER,
    AuthFailure,
    Emulator,
    json_response,
    partner_center_error,
)
from .world import SKU_CATALOG

HEADER = (
    "ProductTitle",
    "ProductId",
    "SkuId",
    "SkuTitle",
    "Publisher",
    "SkuDescription",
    "UnitOfMeasure",
    "TermDuration",
    "BillingPlan",
    "Market",
    "Currency",
    "UnitPrice",
    "PricingTierRangeMin",
    "PricingTierRangeMax",
    "EffectiveStartDate",
    "EffectiveEndDate",
    "Tags",
    "ERP Price",
)
VIEWS = (
    "azure_consumption",
    "azure_reservations",
    "updatedlicensebased",
    "marketplace",
    "software",
)
#: The currencies of each market's list, in the order a price's rows are written.
MARKETS = {"GB": ("CHF", "DKK", "EUR", "GBP", "NOK", "SEK"), "US": ("USD",)}
#: A European currency's price point: the GBP one times this, to the cent.
EUROPEAN_RATES = {
    "CHF": Decimal("1.10"),
    "DKK": Decimal("8.70"),
    "EUR": Decimal("1.17"),
    "NOK": Decimal("13.60"),
    "SEK": Decimal("13.40"),
}
PARTNER_RATIO = Decimal("0.8")  # 115.2 / 144 in the page's sample row
#: Estimated retail price a user a month, on a one-year term billed annually.
MONTHLY_ERP = {
    "SPE_E3": {"GBP": Decimal("33.10"), "USD": Decimal("36.00")},
    "SPB": {"GBP": Decimal("18.10"), "USD": Decimal("22.00")},
    "O365_BUSINESS_PREMIUM": {"GBP": Decimal("10.30"), "USD": Decimal("12.50")},
    "O365_BUSINESS_ESSENTIALS": {"GBP": Decimal("4.90"), "USD": Decimal("6.00")},
    "DESKLESSPACK": {"GBP": Decimal("6.60"), "USD": Decimal("8.00")},
    "FLOW_FREE": {"GBP": Decimal("0"), "USD": Decimal("0")},
}
DESCRIPTIONS = {
    "SPE_E3": "Productivity apps, security and device management for enterprises.",
    "SPB": "Productivity apps with advanced security and device management, for up to 300 users.",
    "O365_BUSINESS_PREMIUM": "Desktop versions of Microsoft 365 apps with email, file storage and Teams, for up to 300 users.",
    "O365_BUSINESS_ESSENTIALS": "Web and mobile versions of Microsoft 365 apps with email, file storage and Teams.",
    "DESKLESSPACK": "Email, collaboration and apps for frontline workers.",
    "FLOW_FREE": "Automate workflows across apps and services.",
}
#: A product priced in tiers of seats: (min, max or None, monthly ERP by currency).
TIERED = {
    "title": "Microsoft Teams Rooms Pro (tiered example)",
    "product": "CFQ7TTC0TIER",
    "sku": "0001",
    "description": "Tiered example: the price a seat falls as the seat count rises.",
    "tiers": (
        (1, 50, {"GBP": Decimal("32.00"), "USD": Decimal("40.00")}),
        (51, 500, {"GBP": Decimal("28.80"), "USD": Decimal("36.00")}),
        (501, None, {"GBP": Decimal("25.60"), "USD": Decimal("32.00")}),
    ),
}
#: (term, billing plan, the price of the whole term in monthly ERPs of a one-year term
#: billed annually): P1M costs 20% more a month, P1Y billed monthly 5% more (12 × 1.05).
PLANS = (
    ("P1M", "Monthly", Decimal("1.2")),
    ("P1Y", "Monthly", Decimal("12.6")),
    ("P1Y", "Annual", Decimal("12")),
)
#: The three-year terms of the products sold on them: 36 months, however they are billed.
THREE_YEAR_PLANS = (
    ("P3Y", "Annual", Decimal("36")),
    ("P3Y", "Triennial", Decimal("36")),
)
#: The monthly ERP of a product with no entry in `MONTHLY_ERP`, in every currency.
DEFAULT_MONTHLY_ERP = Decimal("10")
THREE_YEAR_PRODUCTS = {"SPE_E3", "SPB"}
#: The indirect provider an indirect reseller buys from.
DISTRIBUTOR = {"name": "Emulated Distributor", "mpnId": "4847383", "location": "GB"}
SHEET = re.compile(
    r"^pricesheets\(\s*Market\s*=\s*'(?P<market>[^']*)'\s*,\s*PricesheetView\s*=\s*'(?P<view>[^']*)'\s*\)$",
    re.IGNORECASE,
)


def _error(status: int, code: str, message: str) -> Response:
    return json_response({"code": code, "message": message}, status=status)


def price_text(value: Decimal) -> str:
    """``115.2``, ``144``, ``0``: no exponent, no trailing zeros."""
    text = format(value.quantize(Decimal("0.0001")), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def sheet_date(value: datetime) -> str:
    """``2/1/2019 12:00:00 AM``: month/day/year without padding, 12-hour clock."""
    hour = value.hour % 12 or 12
    half = "AM" if value.hour < 12 else "PM"
    return f"{value.month}/{value.day}/{value.year} {hour}:{value:%M:%S} {half}"


def _month_bounds(first: datetime) -> tuple[datetime, datetime]:
    following = (first + timedelta(days=32)).replace(day=1)
    return first, following - timedelta(seconds=1)


def monthly_erp(prices: dict[str, Decimal], currency: str) -> Decimal:
    """A monthly ERP in ``currency``: its own price point, else the GBP one at the
    `EUROPEAN_RATES`, else `DEFAULT_MONTHLY_ERP`."""
    if currency in prices:
        return prices[currency]
    if "GBP" in prices and currency in EUROPEAN_RATES:
        return (prices["GBP"] * EUROPEAN_RATES[currency]).quantize(Decimal("0.01"))
    return DEFAULT_MONTHLY_ERP


def price_rows(
    market: str,
    start: datetime,
    end: datetime,
    factor: Callable[[str], Decimal] | None = None,
) -> list[list[str]]:
    """The sheet's rows for ``market`` in force from ``start`` to ``end``, each price in
    every currency of the market; ``factor`` gives the change of a ``"ProductId:SkuId"``'s
    price (none by default)."""
    rows: list[list[str]] = []

    def add(title, product, sku, description, term, plan, monthly, times, low="", high="") -> None:
        """The rows of one price: ``monthly`` ERPs by currency, ``times`` of them the term's."""
        change = factor(f"{product}:{sku}") if factor else Decimal(1)
        for currency in MARKETS[market]:
            erp = (monthly_erp(monthly, currency) * times * change).quantize(Decimal("0.01"))
            rows.append(
                [
                    title,
                    product,
                    sku,
                    title,
                    "Microsoft Corporation",
                    description,
                    "",
                    term,
                    plan,
                    market,
                    currency,
                    price_text(erp * PARTNER_RATIO),
                    low,
                    high,
                    sheet_date(start),
                    sheet_date(end),
                    "License",
                    price_text(erp),
                ]
            )

    for _sku_id, part, name, product, catalog_sku in SKU_CATALOG:
        plans = PLANS + (THREE_YEAR_PLANS if part in THREE_YEAR_PRODUCTS else ())
        for term, plan, times in plans:
            add(
                name,
                product,
                catalog_sku,
                DESCRIPTIONS.get(part, name),
                term,
                plan,
                MONTHLY_ERP.get(part, {}),
                times,
            )
    for low, high, prices in TIERED["tiers"]:
        for term, plan, times in PLANS:
            add(
                TIERED["title"],
                TIERED["product"],
                TIERED["sku"],
                TIERED["description"],
                term,
                plan,
                prices,
                times,
                str(low),
                "" if high is None else str(high),
            )
    return rows


def render_csv(rows: list[list[str]], *, curly: bool = True) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, quoting=csv.QUOTE_ALL, lineterminator="\n")
    writer.writerow(HEADER)
    for row in rows:
        writer.writerow(row)
    text = buffer.getvalue()
    if curly:  # the page's header ends "ERP Price“ — a curly quote closes the last column
        first, _, rest = text.partition("\n")
        text = first[:-1] + "\u201c" + "\n" + rest
    return text.encode("utf-8")


def register(emulator: Emulator) -> None:
    world = emulator.world

    @emulator.route(
        "/partnerapi/v1.0/sales/<sheet>/$value",
        endpoint="pricing.pricesheet",
        doc="developer/get-a-price-sheet.md",
    )
    def pricesheet(emu: Emulator, request: Request, sheet: str) -> Response:
        token = emu.authorize(request, PARTNER_API)
        if token.app_only:
            raise AuthFailure(_error(401, "Unauthorized", "Invalid Authorization header"))
        partner = world.partners.get(token.tenant)
        if partner is None:
            return _error(403, "Forbidden", "The caller is not in a partner tenant.")
        if not partner.direct:
            return _error(
                403,
                "Forbidden",
                "Price sheets are available to direct bill partners and indirect providers; "
                "an indirect reseller's prices come from its indirect provider.",
            )
        match = SHEET.match(sheet)
        if match is None:
            return _error(404, "NotFound", f"No resource at sales/{sheet}.")
        market, view = match["market"].upper(), match["view"]
        if view not in VIEWS:
            return _error(400, "BadRequest", f"Invalid PricesheetView '{view}'.")
        if market not in MARKETS:
            return _error(400, "BadRequest", f"Invalid Market '{match['market']}'.")
        if view != "updatedlicensebased":
            return _error(
                501, "NotImplemented", f"The emulator serves only updatedlicensebased, not {view}."
            )
        timeline = request.args.get("timeline", "current").lower()
        this_month = world.now.replace(
            day=1, hour=0, minute=0, second=0, microsecond=0, tzinfo=None
        )
        if timeline == "current":
            start, end = _month_bounds(this_month)
        elif timeline == "history":
            month = request.args.get("month", "")
            if not re.fullmatch(r"\d{6}", month) or not 1 <= int(month[4:]) <= 12:
                return _error(400, "BadRequest", "timeline=history needs month=YYYYMM.")
            first = datetime(int(month[:4]), int(month[4:]), 1)
            if first > this_month:
                return _error(400, "BadRequest", f"Month {month} is not in the past.")
            start, end = _month_bounds(first)
        elif timeline == "future":
            start, end = _month_bounds((this_month + timedelta(days=32)).replace(day=1))
            with world.lock:
                coming = [
                    c
                    for c in world.price_changes
                    if this_month < c.effective.replace(tzinfo=None) <= start
                ]
            if not coming:  # "there will be no future price list returned": 404
                return Response(status=404)
        else:
            return _error(
                400, "BadRequest", f"Invalid timeline '{timeline}': history, current or future."
            )
        month = start.replace(tzinfo=UTC)
        with world.lock:
            factors = {
                c.product_sku.lower(): world.price_factor(c.product_sku, month)
                for c in world.price_changes
            }
        data = render_csv(
            price_rows(market, start, end, lambda key: factors.get(key.lower(), Decimal(1))),
            curly=not emu.state.get("pricesheet_straight_quote"),
        )
        if "deflate" in request.headers.get("Accept-Encoding", "").lower():
            buffer = io.BytesIO()
            with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
                archive.writestr("sheets.csv", data)
            data, filename = buffer.getvalue(), "sheets.zip"
        else:
            filename = "sheets.csv"
        return Response(
            data,
            content_type="application/octet-stream",
            headers={
                "Content-Disposition": f"attachment; filename={filename}",
                "Cache-Control": "private",
            },
        )

    @emulator.route(
        "/partnercenter/v1/relationships",
        endpoint="partner_center.relationships",
        doc="developer/retrieve-a-list-of-indirect-resellers.md",
    )
    def relationships(emu: Emulator, request: Request) -> Response:
        token = emu.authorize(request, PARTNER_CENTER, delegated=True)
        kind = request.args.get("relationship_type", "")
        if kind.lower() not in ("isindirectresellerof", "isindirectcloudsolutionproviderof"):
            return partner_center_error(
                400,
                3000,
                "Invalid property: relationship_type must be IsIndirectResellerOf or "
                "IsIndirectCloudSolutionProviderOf.",
            )
        partner = world.partners.get(token.tenant)
        items = []
        if partner is not None and not partner.direct and kind.lower() == "isindirectresellerof":
            items.append(
                {
                    "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"distributor:{partner.tenant_id}")),
                    **DISTRIBUTOR,
                    "relationshipType": "is_indirect_reseller_of",
                    "state": "Active",
                    "attributes": {"objectType": "PartnerRelationship"},
                }
            )
        return json_response(
            {"totalCount": len(items), "items": items, "attributes": {"objectType": "Collection"}}
        )
