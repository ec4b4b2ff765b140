"""The emulated Partner pricing API: the new-commerce licence price sheet as CSV or zip,
timelines, and the App+User-only rule; checked against the documented sample."""

from __future__ import annotations

import csv
import io
import re
import zipfile
from datetime import UTC, datetime
from decimal import Decimal

import requests
from conformance import assert_conforms, load_sample

from halo_microsoft_emulator import app as emulator_app
from halo_microsoft_emulator import pricing
from halo_microsoft_emulator.world import PLANNED_PRICE_CHANGES, SKU_CATALOG

SHEET = "/partnerapi/v1.0/sales/pricesheets(Market='{market}',PricesheetView='{view}')/$value"
DATE = re.compile(r"^\d{1,2}/\d{1,2}/\d{4} \d{1,2}:\d{2}:\d{2} [AP]M$")
PRICE = re.compile(r"^\d+(\.\d+)?$")


def headers(server, *, delegated: bool = True, encoding: str = "identity") -> dict[str, str]:
    partner = next(iter(server.world.partners.values()))
    token = server.app.tokens.issue(
        client_id=partner.partner_center_app.client_id,
        tenant=partner.tenant_id,
        resource=emulator_app.PARTNER_API,
        scopes=(f"{emulator_app.PARTNER_API}/{'user_impersonation' if delegated else '.default'}",),
        user="sales-agent@emulatedmsp1.onmicrosoft.com" if delegated else None,
    )
    return {"Authorization": f"Bearer {token.value}", "Accept-Encoding": encoding}


def sheet(
    server, market: str = "GB", view: str = "updatedlicensebased", query: str = "", **kwargs
) -> requests.Response:
    kwargs.setdefault("headers", headers(server))
    url = server.base_url + SHEET.format(market=market, view=view) + query
    return requests.get(url, verify=str(server.ca_bundle), timeout=10, **kwargs)


def parse(text: str) -> tuple[list[str], list[list[str]]]:
    """Header and rows. The header's last column closes with a curly quote, as documented,
    so it is read on its own, its last quote straightened."""
    header_line, _, rest = text.partition("\n")
    assert header_line.endswith('"ERP Price\u201c')
    header = next(csv.reader([header_line[:-1] + '"']))
    return header, list(csv.reader(io.StringIO(rest)))


def test_price_sheet_csv_as_documented(emulator):
    response = sheet(emulator)
    assert response.status_code == 200, response.text
    sample = load_sample("pricing", "pricesheet_updatedlicensebased")
    text = response.content.decode("utf-8")
    lines = text.splitlines()
    actual = {"headers": dict(response.headers), "lines": lines}
    assert_conforms(sample, actual)
    for name, value in sample["response"]["headers"].items():
        assert response.headers[name] == value
    assert lines[0] == sample["response"]["lines"][0]  # byte for byte, curly quote included
    # A naive CSV reader runs the header into the first row: the curly quote never closes it.
    assert len(next(csv.reader(io.StringIO(text)))) != 18

    header, rows = parse(text)
    assert header == list(pricing.HEADER)
    tiered = [r for r in rows if r[12]]
    plain = [r for r in rows if not r[12]]
    three_year = [part for _, part, *_ in SKU_CATALOG if part in pricing.THREE_YEAR_PRODUCTS]
    currencies = pricing.MARKETS["GB"]
    assert len(currencies) == 6
    assert len(plain) == (len(SKU_CATALOG) * 3 + len(three_year) * 2) * 6
    assert len(tiered) == 9 * 6
    keys = {(r[1], r[2], r[7], r[8], r[10]) for r in plain}
    assert len(keys) == len(plain)  # one row per product, SKU, term, billing plan and currency
    assert {(r[7], r[8]) for r in plain} == {
        ("P1M", "Monthly"),
        ("P1Y", "Monthly"),
        ("P1Y", "Annual"),
        ("P3Y", "Annual"),
        ("P3Y", "Triennial"),
    }
    assert {(r[1], r[2]) for r in plain} == {
        (product, sku) for _, _, _, product, sku in SKU_CATALOG
    }
    for row in rows:
        assert len(row) == 18 and row[9] == "GB" and row[16] == "License"
        assert row[10] in currencies
        assert DATE.match(row[14]) and DATE.match(row[15]), row
        assert PRICE.match(row[11]) and PRICE.match(row[17]), row
        assert Decimal(row[11]) == Decimal(row[17]) * Decimal("0.8")
    assert plain[0][14] == "1/1/2026 12:00:00 AM" and plain[0][15] == "1/31/2026 11:59:59 PM"

    us = parse(sheet(emulator, market="us").content.decode("utf-8"))[1]
    assert {(r[9], r[10]) for r in us} == {("US", "USD")}


def test_a_european_sheet_prices_each_row_in_the_six_european_currencies(emulator):
    """pricing-and-offers.md: European market lists "include pricing in all six supported
    European currencies (SEK, NOK, CHF, DKK, GBP, EUR)"."""
    _, rows = parse(sheet(emulator).content.decode("utf-8"))
    by_price: dict[tuple, list[str]] = {}
    for row in rows:
        by_price.setdefault((row[1], row[2], row[7], row[8], row[12]), []).append(row[10])
    assert all(
        sorted(found) == ["CHF", "DKK", "EUR", "GBP", "NOK", "SEK"] for found in by_price.values()
    )
    # GBP is not the first row of a price: a reader that takes the first row it meets
    # prices a GB partner in another currency.
    assert all(found[0] != "GBP" for found in by_price.values())
    gbp = {k: Decimal(r[17]) for r in rows if r[10] == "GBP" for k in [(r[1], r[7], r[8], r[12])]}
    eur = {k: Decimal(r[17]) for r in rows if r[10] == "EUR" for k in [(r[1], r[7], r[8], r[12])]}
    assert gbp.keys() == eur.keys() and any(eur[k] != gbp[k] for k in gbp)


def test_unit_prices_are_the_price_of_the_whole_term(emulator):
    """pricing-and-offers.md: "The UnitPrice amount is for the term being purchased. If a
    partner purchases an annual term with monthly pricing, they'll be billed one-twelfth the
    total amount each monthly billing period." """
    for market in ("GB", "US"):
        _, rows = parse(sheet(emulator, market=market).content.decode("utf-8"))
        erp = {(r[1], r[10], r[12], r[7], r[8]): Decimal(r[17]) for r in rows}
        unit = {(r[1], r[10], r[12], r[7], r[8]): Decimal(r[11]) for r in rows}
        prices = {key[:3] for key in erp}
        assert prices
        for price in prices:
            one_year = erp[(*price, "P1Y", "Annual")]
            # Billed monthly, a one-year term costs 5% more: twelve months of it, not one.
            assert erp[(*price, "P1Y", "Monthly")] == (one_year * Decimal("1.05")).quantize(
                Decimal("0.01")
            )
            if (*price, "P3Y", "Annual") in erp:
                # Three years, whether billed once a year or once for the term.
                assert erp[(*price, "P3Y", "Annual")] == one_year * 3
                assert unit[(*price, "P3Y", "Annual")] == unit[(*price, "P3Y", "Triennial")]
        assert any(key[3] == "P3Y" for key in erp)
        assert unit[("CFQ7TTC0LSGZ", pricing.MARKETS[market][0], "", "P1Y", "Annual")] == 0


def test_deflate_answers_a_zip(emulator):
    plain = sheet(emulator).content
    for encoding in ("deflate", "gzip, deflate"):  # requests sends the latter by default
        response = sheet(emulator, headers=headers(emulator, encoding=encoding))
        assert response.status_code == 200
        assert response.headers["Content-Type"] == "application/octet-stream"
        assert "Content-Encoding" not in response.headers
        with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
            (name,) = archive.namelist()
            assert name.endswith(".csv")
            assert archive.read(name) == plain
    header, rows = parse(plain.decode("utf-8"))
    assert len(header) == 18 and rows


def test_timelines(emulator):
    world = emulator.world
    # A generated world plans the changes of world.PLANNED_PRICE_CHANGES for next month.
    assert {(c.product_sku, c.effective) for c in world.price_changes} == {
        (key, datetime(2026, 2, 1, tzinfo=UTC)) for key in PLANNED_PRICE_CHANGES
    }
    world.price_changes.clear()
    assert sheet(emulator, query="?timeline=future").status_code == 404  # no planned changes
    world.plan_price_change("CFQ7TTC0LFLZ:0001", "1.1")
    future = sheet(emulator, query="?timeline=future")
    assert future.status_code == 200
    _, rows = parse(future.content.decode("utf-8"))
    _, now = parse(sheet(emulator).content.decode("utf-8"))
    assert rows[0][14] == "2/1/2026 12:00:00 AM"
    e3_now = {(r[7], r[8], r[10]): Decimal(r[17]) for r in now if r[1] == "CFQ7TTC0LFLZ"}
    e3_future = {(r[7], r[8], r[10]): Decimal(r[17]) for r in rows if r[1] == "CFQ7TTC0LFLZ"}
    # 10% up (each price rounded to the penny from the unrounded list price)
    assert all(abs(e3_future[k] - e3_now[k] * Decimal("1.1")) <= Decimal("0.01") for k in e3_now)
    assert [r for r in rows if r[1] != "CFQ7TTC0LFLZ"] == [
        r[:14] + rows[0][14:16] + r[16:] for r in now if r[1] != "CFQ7TTC0LFLZ"
    ]

    history = sheet(emulator, query="?timeline=history&month=202511")
    assert history.status_code == 200
    assert parse(history.content.decode("utf-8"))[1][0][14:16] == [
        "11/1/2025 12:00:00 AM",
        "11/30/2025 11:59:59 PM",
    ]
    assert sheet(emulator, query="?timeline=history").status_code == 400
    # A month later the change is in force: the current list has it, the future one is gone.
    world.advance(days=31)
    _, february = parse(sheet(emulator).content.decode("utf-8"))
    assert [r[17] for r in february if r[1] == "CFQ7TTC0LFLZ"] == [
        r[17] for r in rows if r[1] == "CFQ7TTC0LFLZ"
    ]
    assert february[0][14] == "2/1/2026 12:00:00 AM"
    assert sheet(emulator, query="?timeline=future").status_code == 404
    january = parse(sheet(emulator, query="?timeline=history&month=202601").content.decode())[1]
    assert {
        (r[7], r[8], r[10]): Decimal(r[17]) for r in january if r[1] == "CFQ7TTC0LFLZ"
    } == e3_now
    assert sheet(emulator, query="?timeline=history&month=209901").status_code == 400
    assert sheet(emulator, query="?timeline=someday").status_code == 400


def test_refusals(emulator):
    app_only = sheet(emulator, headers=headers(emulator, delegated=False))
    assert app_only.status_code == 401
    partner = next(iter(emulator.world.partners.values()))
    partner.direct = False  # an indirect (Tier 2) reseller
    assert sheet(emulator).status_code == 403
    partner.direct = True
    assert sheet(emulator, headers={}).status_code == 401
    assert sheet(emulator, market="ZZ").status_code == 400
    assert sheet(emulator, view="nonsense").status_code == 400
    assert sheet(emulator, view="azure_consumption").status_code == 501


def test_indirect_providers_of_a_partner(emulator):
    """retrieve-a-list-of-indirect-resellers.md: IsIndirectResellerOf lists an indirect
    reseller's providers; App+User only."""
    partner = next(iter(emulator.world.partners.values()))
    token = emulator.app.tokens.issue(
        client_id=partner.partner_center_app.client_id,
        tenant=partner.tenant_id,
        resource=emulator_app.PARTNER_CENTER,
        scopes=(f"{emulator_app.PARTNER_CENTER}/user_impersonation",),
        user="admin@emulatedmsp1.onmicrosoft.com",
    )

    def relationships(kind: str, bearer: str = token.value) -> requests.Response:
        return requests.get(
            f"{emulator.base_url}/partnercenter/v1/relationships",
            params={"relationship_type": kind},
            headers={"Authorization": f"Bearer {bearer}"},
            verify=str(emulator.ca_bundle),
            timeout=10,
        )

    direct = relationships("IsIndirectResellerOf")
    assert direct.status_code == 200
    assert direct.json() == {
        "totalCount": 0,
        "items": [],
        "attributes": {"objectType": "Collection"},
    }
    partner.direct = False
    [provider] = relationships("IsIndirectResellerOf").json()["items"]
    assert provider["relationshipType"] == "is_indirect_reseller_of"
    assert provider["state"] == "Active" and provider["name"] == "Emulated Distributor"
    assert provider["attributes"] == {"objectType": "PartnerRelationship"}
    assert relationships("IsIndirectCloudSolutionProviderOf").json()["items"] == []
    assert relationships("Nonsense").status_code == 400
    app_only = emulator.app.tokens.issue(
        client_id=partner.partner_center_app.client_id,
        tenant=partner.tenant_id,
        resource=emulator_app.PARTNER_CENTER,
        scopes=(f"{emulator_app.PARTNER_CENTER}/.default",),
        user=None,
    )
    assert relationships("IsIndirectResellerOf", app_only.value).status_code == 403
