"""Subscription pricing (guide 5.2): the price sheet read as Microsoft documents it, matched to
the stored subscriptions, priced by the sell-price rules and kept as history; the module's
refusals (app-only tokens, indirect partners), its commands, and a run against the emulator."""

from __future__ import annotations

import calendar
import copy
import csv
import functools
import io
import json
import tracemalloc
import zipfile
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from conformance import load_sample

from halo_integrator_core import Price, RecordError
from halo_integrator_core.cli import cli, register_plugin_commands
from halo_integrator_core.config import ConfigError, load_config, structure_module_settings
from halo_integrator_core.context import module_context
from halo_integrator_core.export import export_rows
from halo_integrator_core.plugins import PluginHost
from halo_integrator_core.pricing import (
    PriceSheet,
    PricingSettings,
    StoredSubscription,
    import_prices,
    list_changes,
)
from halo_integrator_core.pricing.matching import Match
from halo_integrator_core.store import schema
from halo_integrator_core.sync.engine import SyncEngine
from halo_microsoft_emulator import pricing as emulated_pricing
from halo_microsoft_emulator.demo import authorize_through_emulator
from halo_microsoft_emulator.world import Subscription as WorldSubscription
from halo_subscription_pricing import commands as pricing_commands
from halo_subscription_pricing.settings import SubscriptionPricingSettings
from halo_subscription_pricing.sheet import SheetError, header_names, read_sheet, sheet_date

SAMPLE = load_sample("pricing", "pricesheet_updatedlicensebased")
UTC_JAN = datetime(2026, 1, 5, 9, tzinfo=UTC)


# --- the sheet, as the page documents it ------------------------------------------------------


def _csv(*lines: str) -> io.BytesIO:
    return io.BytesIO(("\n".join(lines) + "\n").encode("utf-8"))


def _zip(data: bytes, name: str = "sheets.csv") -> io.BytesIO:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(name, data)
    buffer.seek(0)
    return buffer


def test_the_documented_sample_reads_as_one_price_its_curly_quote_and_all():
    header, row = SAMPLE["response"]["lines"]
    assert header.endswith('"ERP Price\u201c')  # the page's quirk, kept in the sample
    [price] = read_sheet(_csv(header, row), "US")
    assert price == Price(
        market="US",
        product_id="CFQ7TTC0HDK0",
        sku_id="0001",
        term_duration="P1Y",
        billing_plan="Annual",
        currency="USD",
        unit_price=Decimal("115.2"),
        effective_start=datetime(2019, 2, 1, tzinfo=UTC),
        effective_end=datetime(2021, 2, 4, 20, 35, 31, tzinfo=UTC),
        name="Advanced Communications",
        attributes={
            "productTitle": "Advanced Communications",
            "skuTitle": "Advanced Communications",
            "unitOfMeasure": None,
            "tags": "License",
            "termPrice": "115.2",
            "erpPrice": "144",
        },
    )
    assert isinstance(price.unit_price, Decimal)
    # A reader that trusted the quote would run the header into the row: 1 row, not 18 columns.
    assert len(next(csv.reader(io.StringIO(header + "\n" + row)))) != 18
    assert header_names(header)[-1] == "ERP Price"


def test_a_zip_reads_as_the_csv_it_holds():
    header, row = SAMPLE["response"]["lines"]
    plain = _csv(header, row, row.replace('"115.2"', '"99"'))
    expected = list(read_sheet(plain, "US"))
    assert len(expected) == 2
    assert list(read_sheet(_zip(plain.getvalue()), "US")) == expected
    # A straight closing quote, columns in another order and a BOM read the same.
    straight = header.replace("\u201c", '"')
    names = next(csv.reader([straight]))
    values = next(csv.reader([row]))
    order = list(reversed(range(len(names))))
    shuffled = io.BytesIO(
        "\ufeff".encode()
        + (
            ",".join(f'"{names[i]}"' for i in order)
            + "\n"
            + ",".join(f'"{values[i]}"' for i in order)
            + "\n"
        ).encode()
    )
    assert list(read_sheet(shuffled, "US")) == expected[:1]


def test_a_sheet_without_a_column_prices_need_fails_whole():
    header, row = SAMPLE["response"]["lines"]
    broken = header.replace('"UnitPrice",', "")
    with pytest.raises(SheetError, match="header lacks UnitPrice"):
        list(read_sheet(_csv(broken, row), "US"))
    with pytest.raises(SheetError, match="damaged zip"):
        list(read_sheet(io.BytesIO(b"PK\x03\x04 not a zip at all"), "US"))


def test_a_bad_row_is_a_record_error_naming_its_line_and_the_rest_goes_on():
    header, row = SAMPLE["response"]["lines"]
    bad_price = row.replace('"115.2"', '"one hundred"')
    bad_date = row.replace('"2/1/2019 12:00:00 AM"', '"the first of February"')
    short = '"Advanced Communications","CFQ7TTC0HDK0"'
    rows = list(read_sheet(_csv(header, bad_price, row, bad_date, "", short), "US"))
    assert [type(r).__name__ for r in rows] == [
        "RecordError",
        "Price",
        "RecordError",
        "RecordError",
    ]
    assert rows[0] == RecordError(
        entity_id="CFQ7TTC0HDK0:0001",
        reason="sheets.csv line 2: UnitPrice: 'one hundred' is not a decimal number",
    )
    assert "line 4: EffectiveStartDate:" in rows[2].reason
    assert "line 6: 2 fields where the header has 18" in rows[3].reason


def _row(term: str, plan: str, price: str, *, product: str = "CFQ7TTC0HDK0") -> str:
    _, row = SAMPLE["response"]["lines"]
    values = next(csv.reader([row]))
    values[1], values[7], values[8], values[11] = product, term, plan, price
    return ",".join(f'"{value}"' for value in values)


def test_a_unit_price_is_the_terms_and_is_divided_into_its_billing_periods():
    """pricing-and-offers.md: "The UnitPrice amount is for the term being purchased. If a
    partner purchases an annual term with monthly pricing, they'll be billed one-twelfth the
    total amount each monthly billing period." A row's price is a billing period's."""
    header, _ = SAMPLE["response"]["lines"]
    terms = [
        ("P1M", "Monthly", "24", Decimal("24")),
        ("P1Y", "Monthly", "240", Decimal("20")),  # a twelfth a month, not 240 a month
        ("P1Y", "Annual", "240", Decimal("240")),
        ("P3Y", "Monthly", "720", Decimal("20")),
        ("P3Y", "Annual", "720", Decimal("240")),  # a third a year, not 720 a year
        ("P3Y", "Triennial", "720", Decimal("720")),
        ("P1Y", "monthly", "115.2", Decimal("9.6")),  # exact: no rounding, no float
        ("P1Y", "Monthly", "100", Decimal("8.333333")),  # to the six places the store keeps
        ("P1M", "None", "0", Decimal("0")),  # a trial: no billing plan, no charge
    ]
    rows = list(read_sheet(_csv(header, *(_row(t, p, u) for t, p, u, _ in terms)), "US"))
    assert [(r.term_duration, r.billing_plan, r.unit_price) for r in rows] == [
        (t, p, expected) for t, p, _, expected in terms
    ]
    assert all(isinstance(r.unit_price, Decimal) for r in rows)
    assert str(rows[1].unit_price) == "20" and str(rows[6].unit_price) == "9.6"
    # The sheet's own figure, the price of the term, is kept beside it.
    assert [r.attributes["termPrice"] for r in rows] == [u for _, _, u, _ in terms]


def test_a_term_or_plan_that_cannot_be_divided_is_a_bad_row_and_the_rest_goes_on():
    header, _ = SAMPLE["response"]["lines"]
    rows = list(
        read_sheet(
            _csv(
                header,
                _row("P1X", "Monthly", "240"),
                _row("P1Y", "Monthly", "240"),
                _row("annual", "Annual", "240"),
                _row("P1M", "Annual", "24"),
                _row("P1Y", "Quarterly", "240"),
                _row("P30D", "Monthly", "24"),
            ),
            "US",
        )
    )
    assert [type(r).__name__ for r in rows] == [
        "RecordError",
        "Price",
        "RecordError",
        "RecordError",
        "RecordError",
        "RecordError",
    ]
    assert rows[0] == RecordError(
        entity_id="CFQ7TTC0HDK0:0001",
        reason="sheets.csv line 2: TermDuration: 'P1X' is not a term of whole months or years "
        "(P1M, P1Y, P3Y), so the price of the term cannot be divided into billing periods",
    )
    assert rows[1].unit_price == Decimal("20")
    assert "line 4: TermDuration: 'annual' is not a term" in rows[2].reason
    assert rows[3].reason == (
        "sheets.csv line 5: BillingPlan: 'Annual' bills every 12 months, longer than the term "
        "of 1 month"
    )
    assert rows[4].reason == (
        "sheets.csv line 6: BillingPlan: 'Quarterly' is not a billing plan (Monthly, Annual, "
        "Triennial; None for no recurring charge), so the price of the term cannot be "
        "divided into billing periods"
    )
    assert "line 7: TermDuration: 'P30D' is not a term of whole months" in rows[5].reason


def test_sheet_dates_are_utc_in_the_documented_and_iso_forms():
    assert sheet_date("2/4/2021 8:35:31 PM") == datetime(2021, 2, 4, 20, 35, 31, tzinfo=UTC)
    assert sheet_date("12/31/2025 11:59:59 PM") == datetime(2025, 12, 31, 23, 59, 59, tzinfo=UTC)
    assert sheet_date("1/1/2026 12:00:00 AM") == datetime(2026, 1, 1, tzinfo=UTC)
    assert sheet_date("2026-03-01T00:00:00Z") == datetime(2026, 3, 1, tzinfo=UTC)
    assert sheet_date("3/1/2026") == datetime(2026, 3, 1, tzinfo=UTC)
    assert sheet_date(" ") is None
    with pytest.raises(ValueError):
        sheet_date("soon")


def test_sheet_dates_in_the_24_hour_form_of_the_pricing_page_read_to_the_minute():
    """pricing-and-offers.md's field table writes EffectiveStartDate ``2/1/2023 0:00`` and
    EffectiveEndDate ``11/30/9999 23:59``."""
    assert sheet_date("2/1/2023 0:00") == datetime(2023, 2, 1, tzinfo=UTC)
    assert sheet_date("11/30/9999 23:59") == datetime(9999, 11, 30, 23, 59, tzinfo=UTC)
    assert sheet_date("12/31/2022 13:05") == datetime(2022, 12, 31, 13, 5, tzinfo=UTC)
    header, row = SAMPLE["response"]["lines"]
    row = row.replace("2/1/2019 12:00:00 AM", "2/1/2023 0:00")
    row = row.replace("2/4/2021 8:35:31 PM", "11/30/9999 23:59")
    [price] = read_sheet(_csv(header, row), "US")
    assert (price.effective_start, price.effective_end) == (
        datetime(2023, 2, 1, tzinfo=UTC),
        datetime(9999, 11, 30, 23, 59, tzinfo=UTC),
    )


def test_a_large_sheet_streams_keeping_only_the_products_subscribed(tmp_path):
    """The file is read row by row from disk; only wanted rows stay in memory."""
    header = emulated_pricing.render_csv([]).decode().splitlines()[0]
    path = tmp_path / "sheets.csv"
    with path.open("w", encoding="utf-8", newline="") as out:
        out.write(header + "\n")
        writer = csv.writer(out, quoting=csv.QUOTE_ALL, lineterminator="\n")
        for n in range(40_000):
            description = "A description long enough to weigh something in memory." * 2
            writer.writerow(
                [
                    *(f"Product {n}", f"CFQ7TTC0{n:04X}", "0001", "Title", "Microsoft"),
                    *(description, "", "P1Y", "Annual", "GB", "GBP", "120", "", ""),
                    *("1/1/2026 12:00:00 AM", "1/31/2026 11:59:59 PM", "License", "150"),
                ]
            )
    assert path.stat().st_size > 10_000_000
    sheet = PriceSheet("GB", "current", {("cfq7ttc00001", "0001")}, currency="GBP")
    tracemalloc.start()
    try:
        with path.open("rb") as data:
            for item in read_sheet(data, "GB"):
                sheet.add(item)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (sheet.read, sheet.kept) == (40_000, 1)
    assert peak < 2_000_000, peak


# --- matching --------------------------------------------------------------------------------


def _price(**values: Any) -> Price:
    fields: dict[str, Any] = {
        "market": "GB",
        "product_id": "CFQ7TTC0LH18",
        "sku_id": "0001",
        "term_duration": "P1Y",
        "billing_plan": "Annual",
        "currency": "GBP",
        "unit_price": Decimal("43.2"),
        "effective_start": datetime(2026, 1, 1, tzinfo=UTC),
        "effective_end": datetime(2026, 1, 31, 23, 59, 59, tzinfo=UTC),
    }
    return Price(**(fields | values))


def _sub(**values: Any) -> StoredSubscription:
    fields: dict[str, Any] = {
        "id": 1,
        "tenant_id": "t",
        "external_id": "s-1",
        "customer": "Contoso",
        "name": "Microsoft 365 Business Basic",
        "offer_id": "CFQ7TTC0LH18:0001:006Q",
        "product_id": "CFQ7TTC0LH18",
        "sku_id": "0001",
        "term_duration": "P1Y",
        "billing_cycle": "annual",
        "quantity": 10,
    }
    return StoredSubscription(**(fields | values))


def _sheet(*prices: Price, products=None, currency: str = "GBP") -> PriceSheet:
    sheet = PriceSheet("GB", "current", products or {("cfq7ttc0lh18", "0001")}, currency=currency)
    for price in prices:
        sheet.add(price)
    return sheet


def test_term_and_billing_plan_pick_the_price():
    sheet = _sheet(
        _price(term_duration="P1M", billing_plan="Monthly", unit_price=Decimal("4.32")),
        _price(term_duration="P1Y", billing_plan="Monthly", unit_price=Decimal("3.78")),
        _price(term_duration="P1Y", billing_plan="Annual", unit_price=Decimal("43.2")),
    )
    found = {
        (term, cycle): sheet.current(_sub(term_duration=term, billing_cycle=cycle), UTC_JAN)
        for term, cycle in (("P1M", "monthly"), ("P1Y", "monthly"), ("P1Y", "annual"))
    }
    assert {key: match.price.unit_price for key, match in found.items()} == {
        ("P1M", "monthly"): Decimal("4.32"),
        ("P1Y", "monthly"): Decimal("3.78"),  # a monthly-billed annual term: its own price
        ("P1Y", "annual"): Decimal("43.2"),
    }
    miss = sheet.current(_sub(term_duration="P1M", billing_cycle="annual"), UTC_JAN)
    assert miss.reason == (
        "no GB price for CFQ7TTC0LH18 0001 on term P1M billed annual (the sheet prices "
        "CFQ7TTC0LH18 0001 at P1M billed monthly, P1Y billed annual, P1Y billed monthly)"
    )


def test_tiers_pick_the_price_by_quantity():
    tiers = [
        _price(tier_minimum=1, tier_maximum=50, unit_price=Decimal("32")),
        _price(tier_minimum=51, tier_maximum=500, unit_price=Decimal("28.8")),
        _price(tier_minimum=501, tier_maximum=None, unit_price=Decimal("25.6")),
    ]
    sheet = _sheet(*tiers)
    for quantity, expected in ((1, "32"), (50, "32"), (51, "28.8"), (500, "28.8"), (9000, "25.6")):
        match = sheet.current(_sub(quantity=quantity), UTC_JAN)
        assert match.price.unit_price == Decimal(expected), quantity
    miss = sheet.current(_sub(quantity=0), UTC_JAN)
    assert miss.reason == (
        "no price tier of CFQ7TTC0LH18 0001 on term P1Y billed annual covers quantity 0 "
        "(tiers: 1–50, 51–500, 501+)"
    )


def test_the_effective_dates_that_hold_the_day_pick_the_price():
    january = _price(unit_price=Decimal("43.2"))
    february = _price(
        unit_price=Decimal("47.52"),
        effective_start=datetime(2026, 2, 1, tzinfo=UTC),
        effective_end=datetime(2026, 2, 28, 23, 59, 59, tzinfo=UTC),
    )
    sheet = _sheet(january, february)
    assert sheet.current(_sub(), UTC_JAN) == Match(january)
    assert sheet.current(_sub(), datetime(2026, 2, 14, tzinfo=UTC)) == Match(february)
    # Past the sheet's last date: its newest price is the price in force (a lagging sheet).
    late = sheet.current(_sub(), datetime(2026, 11, 28, tzinfo=UTC))
    assert (late.price, late.in_force) == (february, False)
    early = sheet.current(_sub(), datetime(2025, 12, 1, tzinfo=UTC))
    assert (
        early.reason
        == "the GB price of CFQ7TTC0LH18 0001 on term P1Y billed annual starts only on 2026-01-01"
    )
    # The next price after the one in force is what the future sheet plans.
    priced = _sub(price_effective_start=january.effective_start)
    assert sheet.planned(priced) == february
    assert sheet.planned(_sub(price_effective_start=february.effective_start)) is None


def test_a_price_reaches_a_subscription_at_the_renewal_after_it_starts():
    utc = functools.partial(datetime, tzinfo=UTC)
    # A one-year term ending 31 January 2027 (inclusive) began on 1 February 2026.
    yearly = _sub(term_duration="P1Y", commitment_end=utc(2027, 1, 31))
    assert yearly.price_reaches(utc(2026, 1, 1)) == utc(2026, 2, 1)  # in force as it began
    assert yearly.price_reaches(utc(2026, 2, 1)) == utc(2026, 2, 1)
    assert yearly.price_reaches(utc(2026, 4, 1)) == utc(2027, 2, 1)  # mid-term: at renewal
    assert yearly.price_reaches(utc(2027, 3, 1)) == utc(2028, 2, 1)  # after it: the one after
    # Monthly terms from the 31st renew on the last day of shorter months.
    monthly = _sub(term_duration="P1M", commitment_end=utc(2026, 1, 30))
    assert monthly.price_reaches(utc(2026, 1, 2)) == utc(2026, 1, 31)
    assert monthly.price_reaches(utc(2026, 2, 1)) == utc(2026, 2, 28)
    # A subscription that does not renew ends "far, far away": no renewal to wait for.
    never = _sub(term_duration="P1Y", commitment_end=utc(9999, 12, 31))
    assert never.price_reaches(utc(2026, 4, 1)) == utc(2026, 4, 1)
    # No term known: from its start.
    for unknown in (
        _sub(term_duration="P1Y"),
        _sub(term_duration=None, commitment_end=utc(2026, 5, 1)),
    ):
        assert unknown.price_reaches(utc(2026, 4, 1)) == utc(2026, 4, 1)


def test_unmatched_subscriptions_say_why():
    sheet = _sheet(_price())
    legacy = sheet.current(
        _sub(offer_id="031C9E47-4802-4248-838E-778FB1D2CC05", product_id=None), UTC_JAN
    )
    assert legacy.reason.startswith("not a new-commerce licence subscription")
    absent = sheet.current(_sub(product_id="CFQ7TTC0ZZZZ"), UTC_JAN)
    assert absent.reason == "product CFQ7TTC0ZZZZ SKU 0001 is not on the GB price sheet"
    no_cycle = sheet.current(_sub(billing_cycle="none"), UTC_JAN)
    assert "no term duration or billing cycle" in no_cycle.reason


def test_only_rows_in_the_partners_billing_currency_price_a_subscription():
    """A European market's sheet prices each SKU in several currencies (pricing-and-offers.md:
    "All European market price lists will include pricing in all supported currencies in the
    European region"); a GB partner is billed in GBP, whatever order the rows come in."""
    gbp = _price(unit_price=Decimal("43.2"))
    eur = _price(currency="EUR", unit_price=Decimal("50.54"))
    # Another currency's row that starts later must not outrank the partner's own either.
    later_chf = _price(
        currency="CHF",
        unit_price=Decimal("47.52"),
        effective_start=datetime(2026, 1, 2, tzinfo=UTC),
    )
    for order in ((eur, later_chf, gbp), (gbp, eur, later_chf), (later_chf, gbp, eur)):
        sheet = _sheet(*order)
        assert sheet.current(_sub(), UTC_JAN) == Match(gbp), order
        assert sheet.planned(_sub(price_effective_start=gbp.effective_start)) is None
        # Passed over, not kept and not a problem: the sheet simply holds other prices too.
        assert (sheet.read, sheet.kept, sheet.other_currency) == (3, 1, 2)
    assert _sheet(eur, gbp, currency="EUR").current(_sub(), UTC_JAN) == Match(eur)
    assert _sheet(_price(currency="gbp"), currency="gbp").current(_sub(), UTC_JAN).in_force
    # A product priced only in other currencies says so.
    miss = _sheet(eur, later_chf).current(_sub(), UTC_JAN)
    assert miss.reason == (
        "product CFQ7TTC0LH18 SKU 0001 has no GBP price on the GB price sheet (only CHF, EUR)"
    )
    # A term the sheet sells in other currencies only is listed by the partner's currency.
    monthly_eur = _price(currency="EUR", term_duration="P1M", billing_plan="Monthly")
    miss = _sheet(gbp, monthly_eur).current(
        _sub(term_duration="P1M", billing_cycle="monthly"), UTC_JAN
    )
    assert miss.reason.endswith("(the sheet prices CFQ7TTC0LH18 0001 at P1Y billed annual)")


# --- sell-price rules --------------------------------------------------------------------------


def _settings(write_config, text: str) -> SubscriptionPricingSettings:
    config = load_config(write_config(f"[modules.subscription_pricing]\nenabled = true\n{text}"))
    return structure_module_settings(config, "subscription_pricing", SubscriptionPricingSettings)


def test_a_markup_rounds_half_up_to_the_currency_minor_unit(write_config):
    settings = _settings(write_config, "markup_percent = 20\n")
    key = _sub().book_key("GBP")
    assert settings.sell_price(key, Decimal("43.2")).amount == Decimal("51.84")
    assert settings.sell_price(key, Decimal("2.6352")).amount == Decimal("3.16")  # 3.16224
    assert settings.sell_price(key, Decimal("0.0125")).amount == Decimal("0.02")  # 0.015 up
    assert settings.sell_price(_sub().book_key("JPY"), Decimal("1000.5")).amount == Decimal("1201")
    assert settings.sell_price(key, Decimal("10")).rule == "markup 20%"
    assert _settings(write_config, "").sell_price(key, Decimal("10")) is None
    assert _settings(write_config, "markup_percent = 17.5\n").sell_price(
        key, Decimal("10")
    ).amount == Decimal("11.75")  # a TOML float, read as its decimal


def test_the_most_specific_price_book_entry_wins(write_config):
    settings = _settings(
        write_config,
        """markup_percent = 20

[[modules.subscription_pricing.price_book]]
product_id = "CFQ7TTC0LH18"
markup_percent = "10"

[[modules.subscription_pricing.price_book]]
product_id = "CFQ7TTC0LH18"
term_duration = "P1Y"
billing_plan = "monthly"
sell_price = "4.99"
currency = "GBP"
description = "Basic, our monthly price"
""",
    )
    monthly = _sub(billing_cycle="monthly").book_key("GBP")
    fixed = settings.sell_price(monthly, Decimal("3.78"))
    assert (fixed.amount, fixed.rule) == (Decimal("4.99"), "price book: Basic, our monthly price")
    annual = settings.sell_price(_sub().book_key("GBP"), Decimal("43.2"))
    assert (annual.amount, annual.rule) == (
        Decimal("47.52"),
        "markup 10% (price book: CFQ7TTC0LH18)",
    )
    usd = settings.sell_price(_sub(billing_cycle="monthly").book_key("USD"), Decimal("4.5"))
    assert usd.amount == Decimal("4.95")  # the GBP price does not apply to USD prices
    other = settings.sell_price(_sub(product_id="CFQ7TTC0LFLZ").book_key("GBP"), Decimal("10"))
    assert (other.amount, other.rule) == (Decimal("12.00"), "markup 20%")


def test_sell_price_settings_are_checked_with_their_key_paths(write_config):
    with pytest.raises(ConfigError) as caught:
        _settings(
            write_config,
            """markup_percent = "lots"
future_prices = "yes"

[[modules.subscription_pricing.price_book]]
product_id = "CFQ7TTC0LH18"
sell_price = -1
term_duration = "annual"

[[modules.subscription_pricing.price_book]]
product_id = "CFQ7TTC0LH18"
sell_price = "5"
markup_percent = 10
currency = "pounds"
colour = "blue"
""",
        )
    assert sorted(caught.value.problems) == [
        "modules.subscription_pricing.future_prices: expected a boolean, got a string ('yes')",
        "modules.subscription_pricing.markup_percent: not a decimal number: 'lots'",
        "modules.subscription_pricing.price_book[0].sell_price: a price cannot be negative",
        "modules.subscription_pricing.price_book[0].term_duration: not a term duration: "
        "'annual' (give P1M, P1Y or P3Y)",
        "modules.subscription_pricing.price_book[1].colour: unknown key",
    ]
    with pytest.raises(ConfigError) as caught:
        _settings(
            write_config,
            """[[modules.subscription_pricing.price_book]]
product_id = "CFQ7TTC0LH18"
sell_price = "5"
markup_percent = 10
currency = "pounds"
""",
        )
    assert sorted(caught.value.problems) == [
        "modules.subscription_pricing.price_book[0].currency: not a currency code: 'pounds' "
        "(give GBP, USD, ...)",
        "modules.subscription_pricing.price_book[0]: give exactly one of sell_price (a fixed "
        "price a unit, in the sheet's billing period) or markup_percent",
    ]
    assert issubclass(SubscriptionPricingSettings, PricingSettings)


def test_the_billing_currency_is_the_markets_own_unless_set(write_config):
    default = _settings(write_config, "")
    assert default.currency is None
    assert [default.billing_currency(m) for m in ("GB", "us", "DE")] == ["GBP", "USD", None]
    euros = _settings(write_config, 'currency = "EUR"\n')
    assert [euros.billing_currency(m) for m in ("GB", "US")] == ["EUR", "EUR"]
    for wrong in ("pounds", "gbp", "826"):
        with pytest.raises(ConfigError) as caught:
            _settings(write_config, f'currency = "{wrong}"\n')
        assert caught.value.problems == [
            f"modules.subscription_pricing.currency: not a currency code: {wrong!r} (give the "
            'ISO 4217 code of the currency Microsoft bills you in, upper-case: "GBP", "EUR", '
            '"USD")'
        ]


# --- against the emulator -------------------------------------------------------------------


class Pricing:
    """A config pointing at the emulator (one connection, the pricing module on), a store,
    and the engine that runs both modules."""

    def __init__(self, emulator, store, store_url: str, tmp_path: Path, monkeypatch) -> None:
        self.emulator = emulator
        self.world = emulator.world
        self.partner = next(iter(self.world.partners.values()))
        self.store = store
        self.store_url = store_url
        self.dir = tmp_path
        monkeypatch.setenv("TEST_PC_SECRET", self.partner.partner_center_app.secret)
        monkeypatch.setenv("TEST_GDAP_SECRET", self.partner.gdap_app.secret)
        self.configure()

    def configure(
        self, pricing: str = "markup_percent = 20\n", licences: str = "subscriptions_and_skus"
    ) -> None:
        endpoints = "\n".join(f'{k} = "{v}"' for k, v in self.emulator.endpoints().items())
        p = self.partner
        self.path = self.dir / "halo-integrator.toml"
        self.path.write_text(
            f"""
[store]
url = "{self.store_url}"

[endpoints]
{endpoints}

[integrator]
create_customers_from_tenants = true

[modules.microsoft_csp]
enabled = true

[[modules.microsoft_csp.connections]]
name = "main"
tenant_id = "{p.tenant_id}"
licence_import_type = "{licences}"
partner_center_app = {{ client_id = "{p.partner_center_app.client_id}", client_secret = {{ env = "TEST_PC_SECRET" }} }}
gdap_app = {{ client_id = "{p.gdap_app.client_id}", client_secret = {{ env = "TEST_GDAP_SECRET" }} }}

[modules.subscription_pricing]
enabled = true
{pricing}""",
            encoding="utf-8",
        )
        self.config = load_config(self.path)

    def authorize(self) -> None:
        authorize_through_emulator(self.config, self.emulator)

    def engine(self) -> SyncEngine:
        return SyncEngine(self.store, self.config, PluginHost.load(self.config))

    def sync(self) -> None:
        [result] = self.engine().run(module="microsoft_csp", only=["tenants", "subscriptions"])
        assert result.outcome == "succeeded", result.error

    def price(self, **options: Any):
        engine = self.engine()
        options.setdefault("as_of", self.world.now)  # the emulator's clock is its own
        return import_prices(engine, engine.modules["subscription_pricing"], **options)

    def subscriptions(self) -> dict[str, dict[str, Any]]:
        with self.store.read() as connection:
            return {row["external_id"]: row for row in export_rows(connection, "subscriptions")}

    def history(self) -> list[Any]:
        table = schema.subscription_price_changes
        with self.store.read() as connection:
            return connection.execute(sa.select(table).order_by(table.c.id)).all()

    def changes(self, since: datetime = datetime(2020, 1, 1, tzinfo=UTC)):
        with self.store.read() as connection:
            return list_changes(connection, since=since)

    def sheet(
        self, market: str = "GB", month: datetime | None = None, currency: str | None = None
    ) -> dict[tuple, Decimal]:
        """The emulator's prices of ``month`` in ``currency`` (the market's by default) by
        (product, SKU, term, plan) of untiered rows, each a unit's for a billing period."""
        start = (month or self.world.now).replace(day=1, hour=0, minute=0, second=0, tzinfo=None)
        rows = emulated_pricing.price_rows(
            market,
            start,
            start + timedelta(days=27),
            lambda key: self.world.price_factor(key, start.replace(tzinfo=UTC)),
        )
        currency = currency or {"GB": "GBP", "US": "USD"}[market]
        return {
            (r[1], r[2], r[7], r[8].lower()): billing_period_price(r)
            for r in rows
            if not r[12] and r[10] == currency
        }

    def cli(self):
        group = copy.copy(cli)
        group.commands = dict(cli.commands)
        register_plugin_commands(group, ["--config", str(self.path)])
        return group

    def run(self, *args: str) -> Any:
        result = CliRunner().invoke(self.cli(), ["--config", str(self.path), *args])
        assert "Traceback" not in result.output, result.output
        return result

    def reseller_subscriptions(self):
        return {
            s.id: (c, s)
            for c in self.world.customers.values()
            if c.reseller
            for s in c.subscriptions.values()
        }


@pytest.fixture
def priced(emulator, store, store_url, tmp_path, monkeypatch) -> Pricing:
    setup = Pricing(emulator, store, store_url, tmp_path, monkeypatch)
    setup.authorize()
    setup.sync()
    return setup


#: Months of each term and billing period, written out here rather than taken from the code
#: under test.
TERM_MONTHS = {"P1M": 1, "P1Y": 12, "P3Y": 36}
PLAN_MONTHS = {"monthly": 1, "annual": 12, "triennial": 36}


def billing_period_price(row: list[str]) -> Decimal:
    """A sheet row's UnitPrice (the whole term's) as a billing period's, to six places."""
    term_price = Decimal(row[11])
    share = term_price * PLAN_MONTHS[row[8].lower()] / TERM_MONTHS[row[7]]
    return share.quantize(Decimal("0.000001"))


def _key(subscription: WorldSubscription) -> tuple[str, str, str, str]:
    product, sku, _ = subscription.offerId.split(":")
    return (product, sku, subscription.termDuration, subscription.billingCycle)


def test_each_subscription_gets_the_price_of_its_product_term_and_plan(priced):
    result = priced.price(timelines=["current"])
    assert result.outcome == "succeeded", (result.error, result.problems)
    # The GB sheet prices every row in six currencies: the other five are no problem.
    assert result.problems == [] and "price sheet" not in result.counts
    sheet = priced.sheet()
    stored = priced.subscriptions()
    world = priced.reseller_subscriptions()
    assert set(stored) == set(world) and stored
    for subscription_id, (_, subscription) in world.items():
        row = stored[subscription_id]
        cost = sheet[_key(subscription)]
        assert Decimal(row["cost_price"]) == cost, subscription.offerId
        assert row["currency"] == "GBP" and row["price_market"] == "GB"
        assert Decimal(row["sell_price"]) == (cost * Decimal("1.2")).quantize(Decimal("0.01"))
        assert row["sell_price_rule"] == "markup 20%"
        assert row["price_effective_start"] == "2026-01-01T00:00:00+00:00"
        assert row["price_effective_end"] == "2026-01-31T23:59:59+00:00"
        assert row["priced_at"] and row["price_note"] is None
    assert result.counts["subscriptions"].added == len(world)
    assert [row.status for row in priced.history()] == ["initial"] * len(world)
    again = priced.price(timelines=["current"])
    assert again.counts["subscriptions"].unchanged == len(world)
    assert len(priced.history()) == len(world)  # nothing changed, nothing recorded


def test_a_term_price_that_divides_inexactly_is_kept_to_six_places_and_stays_put(
    priced, monkeypatch
):
    """100 a year billed monthly is 8.333...: kept to the six places the store holds (on
    PostgreSQL too), so the next import finds the price it stored, not a change."""
    plans = [(t, p, Decimal("12.5") if (t, p) == ("P1Y", "Monthly") else x)
             for t, p, x in emulated_pricing.PLANS]  # fmt: skip
    monkeypatch.setattr(emulated_pricing, "PLANS", tuple(plans))
    first = priced.price(timelines=["current"])
    assert first.outcome == "succeeded" and first.problems == [], first.error
    sheet, stored = priced.sheet(), priced.subscriptions()
    monthly = [
        (sid, sub)
        for sid, (_, sub) in priced.reseller_subscriptions().items()
        if (sub.termDuration, sub.billingCycle) == ("P1Y", "monthly")
    ]
    assert monthly
    costs = [Decimal(stored[sid]["cost_price"]) for sid, _ in monthly]
    assert costs == [sheet[_key(sub)] for _, sub in monthly]
    assert any(cost.as_tuple().exponent == -6 for cost in costs)  # a rounded twelfth
    again = priced.price(timelines=["current"])
    assert again.counts["subscriptions"].unchanged == len(stored)
    assert [row.status for row in priced.history()] == ["initial"] * len(stored)


def test_both_markets_with_their_currencies(priced):
    priced.price(timelines=["current"])
    result = priced.price(market="US", timelines=["current"])
    assert result.outcome == "succeeded"
    us = priced.sheet("US")
    stored = priced.subscriptions()
    for subscription_id, (_, subscription) in priced.reseller_subscriptions().items():
        row = stored[subscription_id]
        assert (row["currency"], row["price_market"]) == ("USD", "US")
        assert Decimal(row["cost_price"]) == us[_key(subscription)]
    switched = [row for row in priced.history() if row.status == "applied"]
    assert switched and all(
        (row.old_currency, row.currency, row.market) == ("GBP", "USD", "US") for row in switched
    )
    assert result.counts["price changes"].added == len(switched)


def test_a_partner_billed_in_another_currency_of_the_sheet_sets_it(priced):
    priced.configure('markup_percent = 20\ncurrency = "EUR"\n')
    result = priced.price(timelines=["current"])
    assert result.outcome == "succeeded" and result.problems == [], result.error
    euros = priced.sheet(currency="EUR")
    stored = priced.subscriptions()
    for subscription_id, (_, subscription) in priced.reseller_subscriptions().items():
        row = stored[subscription_id]
        assert (row["currency"], row["price_market"]) == ("EUR", "GB")
        assert Decimal(row["cost_price"]) == euros[_key(subscription)]
    # On the US sheet there is no EUR price: every subscription says so, none is priced.
    result = priced.price(market="US", timelines=["current"])
    reasons = {p.reason for p in result.problems}
    assert {p.outcome for p in result.problems} == {"skipped"} and reasons
    assert all("has no EUR price on the US price sheet (only USD)" in r for r in reasons)
    assert result.counts["subscriptions"].skipped == len(stored)


def test_a_market_of_unknown_currency_needs_the_currency_set(priced):
    with pytest.raises(ConfigError) as caught:
        priced.price(market="DE", timelines=["current"])
    assert caught.value.problems == [
        "modules.subscription_pricing.currency: market DE has no known currency (known: GBP "
        "for GB, USD for US): set it to the currency Microsoft bills you in, for example "
        'currency = "EUR"'
    ]


def test_a_price_change_reaches_each_subscription_at_its_renewal(priced):
    """New commerce holds a subscription's price for its term: "Price changes during the
    term don't affect billing plan charges for an existing subscription. Price changes are
    only relevant for renewals" (partner-center/pricing-and-offers.md). A change the future
    sheet announces is planned from each subscription's first renewal on or after it, and
    applied then: not when it comes into force on the current sheet."""
    first = priced.price()
    assert first.outcome == "succeeded", first.error
    planned = priced.changes()
    products = {key.split(":")[0] for key in (c.product_sku for c in priced.world.price_changes)}
    affected = {
        sid: (customer, sub)
        for sid, (customer, sub) in priced.reseller_subscriptions().items()
        if sub.offerId.split(":")[0] in products
    }
    assert affected, "the emulated world plans changes for products it sells"
    assert {c.subscription_id for c in planned} == set(affected)
    stored = priced.subscriptions()

    def renewal(sid: str) -> datetime:
        """The first renewal on or after the change (February 1st), from the term that
        ends on the stored commitment end (every term here began before the change)."""
        end = datetime.fromisoformat(str(stored[sid]["commitment_end"]))
        day = datetime(end.year, end.month, end.day, tzinfo=UTC) + timedelta(days=1)
        months = TERM_MONTHS[str(stored[sid]["term_duration"])]
        while day < datetime(2026, 2, 1, tzinfo=UTC):
            month = day.month - 1 + months
            year, month = day.year + month // 12, month % 12 + 1
            day = day.replace(
                year=year, month=month, day=min(day.day, calendar.monthrange(year, month)[1])
            )
        return day

    february = priced.sheet(month=datetime(2026, 2, 1, tzinfo=UTC))
    january = priced.sheet()
    for change in planned:
        sub = affected[change.subscription_id][1]
        assert change.status == "planned"
        assert (
            change.effective_at
            == renewal(change.subscription_id)
            > datetime(2026, 2, 1, tzinfo=UTC)
        )
        assert (change.old_cost, change.new_cost) == (january[_key(sub)], february[_key(sub)])
        months = {"monthly": 1, "annual": 12}[sub.billingCycle]
        assert change.monthly_difference == (
            (february[_key(sub)] - january[_key(sub)]) / months * sub.quantity
        ).quantize(Decimal("0.01"))
    assert first.counts["price changes"].added == len(planned)
    assert "planned price change" in first.note
    monthly = {sid for sid, (_, sub) in affected.items() if sub.termDuration == "P1M"}
    yearly = set(affected) - monthly
    assert monthly and yearly, "both kinds of term are in the emulated world"

    # A month on, February's prices are in force, but no term has renewed since: each
    # subscription keeps January's price, its change still planned for its renewal.
    priced.world.advance(days=31)
    assert all(renewal(sid) > priced.world.now for sid in affected)
    second = priced.price()
    assert second.outcome == "succeeded", second.error
    assert "no price changes are planned" in second.note  # the future sheet: 404
    stored_now = priced.subscriptions()
    for sid, (_, sub) in affected.items():
        assert Decimal(stored_now[sid]["cost_price"]) == january[_key(sub)]
    assert {c.subscription_id: c.status for c in priced.changes()} == dict.fromkeys(
        affected, "planned"
    )
    # A rule changed meanwhile still makes the sell price: of the cost kept.
    priced.configure("markup_percent = 10\n")
    assert priced.price().outcome == "succeeded"
    stored_now = priced.subscriptions()
    for sid, (_, sub) in affected.items():
        kept = january[_key(sub)]
        assert Decimal(stored_now[sid]["cost_price"]) == kept
        assert Decimal(stored_now[sid]["sell_price"]) == (kept * Decimal("1.1")).quantize(
            Decimal("0.01")
        )

    # Past the monthly terms' renewals: they cost February's price from their renewal; the
    # yearly ones still cost January's, until theirs.
    priced.world.advance(days=16)
    assert all(renewal(sid) <= priced.world.now for sid in monthly)
    assert all(renewal(sid) > priced.world.now for sid in yearly)
    priced.sync()  # Partner Center's terms moved on too
    third = priced.price()
    assert third.outcome == "succeeded", third.error
    stored_now = priced.subscriptions()
    changes = {c.subscription_id: c for c in priced.changes()}
    for sid, (_, sub) in affected.items():
        cost = Decimal(stored_now[sid]["cost_price"])
        if sid in monthly:
            assert cost == february[_key(sub)]
            assert (changes[sid].status, changes[sid].effective_at) == ("changed", renewal(sid))
            assert changes[sid].old_cost == january[_key(sub)]
        else:
            assert cost == january[_key(sub)]
            assert (changes[sid].status, changes[sid].effective_at) == ("planned", renewal(sid))
    statuses = [row.status for row in priced.history()]
    assert statuses.count("applied") == len(monthly)
    assert statuses.count("planned") == len(yearly) and "withdrawn" not in statuses


def test_a_plan_microsoft_withdraws_is_marked_withdrawn(priced):
    priced.price()
    planned = len(priced.changes())
    assert planned
    priced.world.price_changes.clear()  # Microsoft no longer plans them: the future sheet 404s
    result = priced.price(timelines=["future"])
    assert result.counts["price changes"].deactivated == planned
    assert priced.changes() == []
    assert [row.status for row in priced.history()].count("withdrawn") == planned


def test_sell_prices_from_the_price_book_and_the_markup(priced):
    subscription = next(sub for _, sub in priced.reseller_subscriptions().values())
    product, sku, _ = subscription.offerId.split(":")
    priced.configure(
        f"""markup_percent = 10

[[modules.subscription_pricing.price_book]]
product_id = "{product}"
sku_id = "{sku}"
term_duration = "{subscription.termDuration}"
billing_plan = "{subscription.billingCycle}"
sell_price = "99.99"
"""
    )
    priced.price(timelines=["current"])
    stored = priced.subscriptions()
    for sid, (_, sub) in priced.reseller_subscriptions().items():
        row = stored[sid]
        if _key(sub) == _key(subscription):
            assert (Decimal(row["sell_price"]), row["sell_price_rule"]) == (
                Decimal("99.99"),
                f"price book: {product} {sku} {sub.termDuration} billed {sub.billingCycle}",
            )
        else:
            cost = Decimal(row["cost_price"])
            assert Decimal(row["sell_price"]) == (cost * Decimal("1.1")).quantize(Decimal("0.01"))
    # A rule changed later changes the sell price; the cost and its history stay.
    priced.configure("")
    result = priced.price(timelines=["current"])
    assert all(row["sell_price"] is None for row in priced.subscriptions().values())
    assert result.counts["subscriptions"].updated == len(stored)
    assert all(row.status == "initial" for row in priced.history())


def test_unmatched_subscriptions_keep_their_price_and_say_why(priced):
    priced.price(timelines=["current"])
    (customer, first), *_ = priced.reseller_subscriptions().values()
    before = priced.subscriptions()[first.id]
    with priced.world.lock:
        first.termDuration, first.billingCycle = "P1M", "annual"  # sold on no such plan
        legacy = WorldSubscription(
            id="5e9a2b1c-0000-4000-8000-000000000001",
            offerId="031C9E47-4802-4248-838E-778FB1D2CC05",
            offerName="Office 365 E1 (legacy)",
            quantity=3,
            billingCycle="monthly",
            termDuration="P1M",
            creationDate=priced.world.now - timedelta(days=400),
        )
        tiered = WorldSubscription(
            id="5e9a2b1c-0000-4000-8000-000000000002",
            offerId="CFQ7TTC0TIER:0001:0001",
            offerName="Microsoft Teams Rooms Pro",
            quantity=60,
            billingCycle="annual",
            termDuration="P1Y",
            creationDate=priced.world.now - timedelta(days=10),
        )
        customer.subscriptions[legacy.id] = legacy
        customer.subscriptions[tiered.id] = tiered
    priced.sync()
    result = priced.price(timelines=["current"])
    assert result.outcome == "succeeded"
    skipped = {p.entity_id: p.reason for p in result.problems if p.outcome == "skipped"}
    assert set(skipped) == {first.id, legacy.id}
    product, sku, _ = first.offerId.split(":")
    assert f"no GB price for {product} {sku} on term P1M billed annual" in skipped[first.id]
    assert "not a new-commerce licence subscription" in skipped[legacy.id]
    stored = priced.subscriptions()
    # The subscription no row prices keeps the price it had, with the reason.
    assert stored[first.id]["cost_price"] == before["cost_price"]
    assert stored[first.id]["price_note"].startswith(f"no GB price for {product} {sku}")
    assert stored[legacy.id]["cost_price"] is None and stored[legacy.id]["price_note"]
    # Tiered: 60 seats take the 51–500 tier's price.
    tier = next(
        r
        for r in emulated_pricing.price_rows("GB", datetime(2026, 1, 1), datetime(2026, 1, 31))
        if r[1] == "CFQ7TTC0TIER" and r[12] == "51" and r[8] == "Annual" and r[10] == "GBP"
    )
    assert Decimal(stored[tiered.id]["cost_price"]) == billing_period_price(tier)
    listed = priced.run("pricing", "unmatched")
    assert listed.exit_code == 0, listed.output
    kept = pricing_commands._money(before["cost_price"], "GBP")  # the sheet's precision
    assert f"{customer.name} / {first.offerName} ({first.id}) (keeps {kept}): no GB price" in (
        listed.output
    )
    assert f"{customer.name} / Office 365 E1 (legacy) ({legacy.id}): not a new-commerce" in (
        listed.output
    )
    rows = [
        json.loads(line)
        for line in priced.run("pricing", "unmatched", "--format", "json").output.splitlines()
    ]
    assert {row["subscription_id"] for row in rows} == {first.id, legacy.id}


def test_price_sheets_need_the_delegated_authorization(
    emulator, store, store_url, tmp_path, monkeypatch
):
    setup = Pricing(emulator, store, store_url, tmp_path, monkeypatch)
    setup.sync()  # Partner Center accepts the app's own token for subscriptions...
    result = setup.price()
    assert result.outcome == "failed"  # ... the price sheet does not
    assert "price sheets accept only a delegated (App+User) token" in result.error
    assert "app-only" in result.error
    assert "halo-integrator csp authorize main" in result.error
    assert "4990cffe-04e8-4e8b-808a-1175604b879f" in result.error
    assert all(row["cost_price"] is None for row in setup.subscriptions().values())
    assert not any("pricesheets" in path for _, path, _ in emulator.app.requests)


def test_a_cached_token_the_api_refuses_is_asked_for_anew_once(priced):
    priced.price(timelines=["current"])
    priced.emulator.app.tokens.expire_all()  # the cached access tokens are no longer good
    result = priced.price(timelines=["current"])
    assert result.outcome == "succeeded", result.error
    sheets = [r for r in priced.emulator.app.requests if "pricesheets" in r[1]]
    assert [status for *_, status in sheets[-2:]] == [401, 200]


def test_an_indirect_reseller_is_refused_with_the_reason(priced):
    priced.partner.direct = False
    result = priced.price()
    assert result.outcome == "failed"
    assert "is an indirect (Tier 2) reseller" in result.error
    assert "Emulated Distributor" in result.error
    assert "modules disable subscription_pricing" in result.error
    assert all(row["cost_price"] is None for row in priced.subscriptions().values())


def test_hook_check_config_refuses_an_indirect_partner_at_config_check(
    emulator, store, store_url, tmp_path, monkeypatch
):
    setup = Pricing(emulator, store, store_url, tmp_path, monkeypatch)
    setup.configure(licences="skus")
    host = PluginHost.load(setup.config)
    with pytest.raises(ConfigError) as caught:
        host.active_modules()
    [problem] = caught.value.problems
    assert problem.startswith(
        "modules.subscription_pricing: subscription pricing is for direct (Tier 1) partners"
    )
    assert "indirect (Tier 2) partners must use" in problem
    checked = setup.run("config", "check")
    assert checked.exit_code == 2
    assert "subscription pricing is for direct (Tier 1) partners" in checked.output
    setup.configure('connection = "nope"\n')
    checked = setup.run("config", "check")
    assert checked.exit_code == 2
    assert (
        "modules.subscription_pricing.connection: no Microsoft CSP connection is named 'nope'"
        in checked.output
    )
    setup.configure('connection = "main"\n', licences="skus")
    checked = setup.run("config", "check")
    assert "modules.subscription_pricing.connection: connection 'main' imports licence type" in (
        checked.output
    )
    setup.configure()
    assert setup.run("config", "check").exit_code == 0
    setup.path.write_text(
        setup.path.read_text().replace(
            "[modules.microsoft_csp]\nenabled = true", "[modules.microsoft_csp]\nenabled = false"
        )
    )
    checked = setup.run("config", "check")
    assert checked.exit_code == 2
    assert "enable [modules.microsoft_csp] with a connection" in checked.output


def test_hook_fetch_prices_streams_a_market_and_timeline(priced):
    host = PluginHost.load(priced.config)
    engine = SyncEngine(priced.store, priced.config, host)
    active = engine.modules["subscription_pricing"]
    context = module_context(priced.config, active, http=engine.http(dry_run=True))
    hook = host.hook_for("subscription_pricing")
    [rows] = hook.fetch_prices(context=context, market="us", timeline="current")
    rows = list(rows)
    assert rows and all(isinstance(r, Price) and r.currency == "USD" for r in rows)
    [future] = hook.fetch_prices(context=context, market="GB", timeline="future")
    assert {r.effective_start for r in future} == {datetime(2026, 2, 1, tzinfo=UTC)}
    priced.world.price_changes.clear()
    [none] = hook.fetch_prices(context=context, market="GB", timeline="future")
    assert list(none) == []  # 404: no planned changes, not an error


def test_the_pricing_commands(priced):
    dry = priced.run("pricing", "import", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "subscription_pricing: succeeded (dry run: nothing written)" in dry.output
    assert "would add subscriptions" in dry.output
    assert all(row["cost_price"] is None for row in priced.subscriptions().values())

    nothing = priced.run("pricing", "changes")
    assert "no price changes since" in nothing.output

    done = priced.run("pricing", "import", "--timeline", "current", "--market", "gb")
    assert done.exit_code == 0, done.output
    assert all(row["cost_price"] for row in priced.subscriptions().values())
    assert priced.run("pricing", "changes").output.startswith("no price changes")
    future = priced.run("pricing", "import", "--timeline", "future")
    assert future.exit_code == 0 and "planned price change" in future.output

    table = priced.run("pricing", "changes")
    assert table.exit_code == 0
    lines = table.output.splitlines()
    assert lines[0].split() == [
        "effective",
        "status",
        "customer",
        "subscription",
        "qty",
        "old",
        "new",
        "a",
        "month",
    ]
    # Each from its subscription's renewal on or after the change of February 1st.
    assert all(" planned " in line and line[:10] >= "2026-02-01" for line in lines[1:])
    rows = [
        json.loads(line)
        for line in priced.run("pricing", "changes", "--format", "json").output.splitlines()
    ]
    assert rows and {row["status"] for row in rows} == {"planned"}
    assert all(Decimal(row["monthly_difference"]) > 0 for row in rows)
    # The term's end date is its last day (inclusive): it renews the day after.
    stored = priced.subscriptions()
    for row in rows:
        end = datetime.fromisoformat(str(stored[row["subscription_id"]]["commitment_end"]))
        assert row["renews_on"] == f"{end + timedelta(days=1):%Y-%m-%d}" <= row["effective"]
    assert set(rows[0]) == {
        "effective", "status", "customer", "tenant_id", "subscription_id", "subscription",
        "quantity", "term_duration", "billing_cycle", "old_price", "old_currency", "new_price",
        "currency", "monthly_difference", "new_sell_price", "renews_on",
    }  # fmt: skip
    as_csv = priced.run("pricing", "changes", "--format", "csv").output.splitlines()
    assert as_csv[0].startswith("effective,status,customer") and len(as_csv) == len(rows) + 1
    assert priced.run("pricing", "unmatched").output.startswith("every subscription has a price")

    priced.partner.direct = False
    refused = priced.run("pricing", "import")
    assert refused.exit_code == 1
    assert "indirect (Tier 2) reseller" in refused.output
