"""Consumption billing: usage rows into invoice lines (the core), and Graph's partner billing
export read from the emulator (the plugin).

The core's rules (grouping, markups, rounding, idempotent writes, supersession, closed
months, unmapped tenants) run against a small in-test billing plugin that yields the rows
each test needs; the plugin runs against the emulator's asynchronous exports.
"""

from __future__ import annotations

import copy
import gzip
import io
import json
import logging
import re
import socket
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import click
import pytest
import sqlalchemy as sa
import structlog
from click.testing import CliRunner

from halo_integrator_core import (
    Checkpoint,
    ModuleContext,
    ModuleSpec,
    Notice,
    RecordError,
    UsageLine,
    hookimpl,
)
from halo_integrator_core.billing import (
    BillingRunner,
    BillingSettings,
    PeriodError,
    billing_report,
    close_month,
    period_request,
)
from halo_integrator_core.billing.importer import Aggregator, TenantMatch
from halo_integrator_core.billing.money import round_money, sell_price
from halo_integrator_core.billing.report import as_csv, as_data, as_table
from halo_integrator_core.billing.rules import GroupBy
from halo_integrator_core.cli import cli, register_plugin_commands
from halo_integrator_core.config import ConfigError, load_config, structure
from halo_integrator_core.export import export_rows
from halo_integrator_core.http import HttpClient
from halo_integrator_core.logging import configure_logging
from halo_integrator_core.plugins import PluginHost
from halo_integrator_core.store import Store, schema
from halo_integrator_core.store.request_log import StoreRequestLog
from halo_integrator_core.sync.engine import SyncEngine
from halo_microsoft_emulator import billing as emulated_billing

TENANT_A = "aaaaaaaa-0000-4000-8000-00000000000a"  # Contoso
TENANT_B = "bbbbbbbb-0000-4000-8000-00000000000b"  # Fabrikam
TENANT_C = "cccccccc-0000-4000-8000-00000000000c"  # mapped "do not import"
TENANT_D = "dddddddd-0000-4000-8000-00000000000d"  # no mapping
SUB_1 = "11111111-1111-4111-8111-111111111111"
SUB_2 = "22222222-2222-4222-8222-222222222222"
NOW = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)  # current: 2026-01, last: 2025-12
FAKE = "fake_billing"


# --- the core, with an in-test billing plugin -------------------------------------------------


def row(
    tenant: str = TENANT_A,
    cost: str = "10.00",
    *,
    period: str = "2025-12",
    invoice: str | None = None,
    currency: str = "GBP",
    category: str | None = "Virtual Machines",
    meter: str | None = "D2s v3",
    sub: str = SUB_1,
    sub_name: str = "Azure plan 1",
    rg: str | None = "rg-prod",
    tags: dict[str, str] | None = None,
    quantity: str = "1",
    unit: str | None = "1 Hour",
    name: str | None = None,
) -> UsageLine:
    return UsageLine(
        tenant_id=tenant,
        period=period,
        invoice_id=invoice,
        customer_name=name,
        subscription_id=sub,
        subscription_description=sub_name,
        meter_category=category,
        meter_name=meter,
        resource_group=rg,
        tags=tags or {},
        quantity=Decimal(quantity),
        unit=unit,
        cost=Decimal(cost),
        currency=currency,
    )


class FakeBilling:
    """A billing plugin whose usage, per period asked, is what the test put in ``usage``."""

    def __init__(self, usage: dict[str, Any] | None = None) -> None:
        self.usage: dict[str, Any] = usage or {}
        self.calls: list[str] = []

    @hookimpl
    def declare_modules(self) -> list[ModuleSpec]:
        return [ModuleSpec(name=FAKE, title="Fake billing", settings_type=BillingSettings)]

    @hookimpl
    def fetch_usage(self, context: ModuleContext, period: str) -> Iterator[Any]:
        self.calls.append(period)
        for item in self.usage.get(period, []):
            if isinstance(item, Exception):
                raise item
            yield item


def core_config(write_config, settings: str = "", integrator: str = "") -> Any:
    return load_config(
        write_config(
            f"""
[integrator]
{integrator}

[[tenant_mappings]]
tenant_id = "{TENANT_A}"
customer = "Contoso"

[[tenant_mappings]]
tenant_id = "{TENANT_B}"
customer = "Fabrikam"

[[tenant_mappings]]
tenant_id = "{TENANT_C}"
do_not_import = true

[modules.{FAKE}]
enabled = true
{settings}
"""
        )
    )


@pytest.fixture
def billing(store, write_config, host_factory):
    """Run the fake billing module: ``billing(usage, settings=..., periods=...)``."""
    plugin = FakeBilling()
    built: dict[str, Any] = {}

    def run(
        usage: dict[str, Any] | None = None,
        *,
        settings: str = "",
        integrator: str = "",
        periods: list[str] | None = None,
        force: bool = False,
        dry_run: bool = False,
        now: datetime = NOW,
    ) -> Any:
        if usage is not None:
            plugin.usage = usage
        key = settings + integrator
        if key not in built:
            config = core_config(write_config, settings, integrator)
            built[key] = (config, host_factory(config, (plugin, "fake")))
        config, host = built[key]
        runner = BillingRunner(store, config, host, clock=lambda: now)
        [result] = runner.run(FAKE, periods=periods, force=force, dry_run=dry_run)
        return result

    run.plugin = plugin
    return run


def lines(store: Store, *, active: bool | None = True) -> list[dict[str, Any]]:
    with store.read() as connection:
        found = list(export_rows(connection, "invoice-lines"))
    return [line for line in found if active is None or line["active"] is active]


def by_description(store: Store) -> dict[str, dict[str, Any]]:
    return {line["description"]: line for line in lines(store)}


USAGE = [
    row(
        TENANT_A,
        "10.00",
        category="Virtual Machines",
        sub=SUB_1,
        rg="rg-prod",
        tags={"env": "prod"},
    ),
    row(
        TENANT_A,
        "5.50",
        category="Virtual Machines",
        sub=SUB_2,
        sub_name="Azure plan 2",
        rg="rg-dev",
        tags={"Env": "dev"},
    ),
    row(
        TENANT_A,
        "2.25",
        category="Storage",
        meter="Standard SSD",
        sub=SUB_1,
        rg="RG-PROD",
        unit="1/Month",
        quantity="3",
    ),
    row(
        TENANT_B,
        "7.00",
        category="Storage",
        meter="Standard SSD",
        sub=SUB_2,
        sub_name="Azure plan 2",
        rg="rg-shared",
        unit="1/Month",
    ),
]


@pytest.mark.parametrize(
    ("group_by", "expected"),
    [
        ('["customer"]', {("Contoso", "customer"): "17.75", ("Fabrikam", "customer"): "7.00"}),
        (
            '["subscription"]',
            {
                ("Contoso", f"subscription={SUB_1}"): "12.25",
                ("Contoso", f"subscription={SUB_2}"): "5.50",
                ("Fabrikam", f"subscription={SUB_2}"): "7.00",
            },
        ),
        (
            '["meter_category"]',
            {
                ("Contoso", "meter_category=Virtual Machines"): "15.50",
                ("Contoso", "meter_category=Storage"): "2.25",
                ("Fabrikam", "meter_category=Storage"): "7.00",
            },
        ),
        (
            '["meter"]',
            {
                ("Contoso", "meter=Virtual Machines/D2s v3"): "15.50",
                ("Contoso", "meter=Storage/Standard SSD"): "2.25",
                ("Fabrikam", "meter=Storage/Standard SSD"): "7.00",
            },
        ),
        (
            # Resource groups ignore case and are scoped to their subscription.
            '["resource_group"]',
            {
                ("Contoso", f"resource_group={SUB_1}/rg-prod"): "12.25",
                ("Contoso", f"resource_group={SUB_2}/rg-dev"): "5.50",
                ("Fabrikam", f"resource_group={SUB_2}/rg-shared"): "7.00",
            },
        ),
        (
            # Tag names ignore case; rows without the tag share one line.
            '["tag"]\ngroup_tag = "env"',
            {
                ("Contoso", "tag:env=prod"): "10.00",
                ("Contoso", "tag:env=dev"): "5.50",
                ("Contoso", "tag:env="): "2.25",
                ("Fabrikam", "tag:env="): "7.00",
            },
        ),
    ],
)
def test_each_grouping_makes_the_lines_it_names(billing, store, group_by, expected):
    result = billing({"last": USAGE}, settings=f"group_by = {group_by}", periods=["last"])
    assert result.outcome == "succeeded", result.problems
    found = {(line["customer"], line["group_key"]): line["cost"] for line in lines(store)}
    assert {key: Decimal(cost) for key, cost in found.items()} == {
        key: Decimal(cost) for key, cost in expected.items()
    }
    assert all(
        line["period"] == "2025-12" and line["source"] == "unbilled" for line in lines(store)
    )
    assert all(line["status"] == "estimate" for line in lines(store))


def test_dimensions_combine_and_the_description_names_what_the_line_holds(billing, store):
    billing(
        {"last": USAGE},
        settings='group_by = ["subscription", "meter_category"]\n'
        'description = "Azure {MeterCategory} — {SubscriptionDescription} ({period}, {customer})"',
        periods=["last"],
    )
    assert set(by_description(store)) == {
        "Azure Virtual Machines — Azure plan 1 (2025-12, Contoso)",
        "Azure Virtual Machines — Azure plan 2 (2025-12, Contoso)",
        "Azure Storage — Azure plan 1 (2025-12, Contoso)",
        "Azure Storage — Azure plan 2 (2025-12, Fabrikam)",
    }


def test_a_field_that_varies_in_a_line_is_listed_then_called_various(billing, store):
    many = [row(TENANT_A, "1", sub=f"{i}" * 8, sub_name=f"Plan {i}") for i in range(1, 5)]
    settings = (
        'group_by = ["customer"]\n'
        'description = "Azure for {customer}: {SubscriptionDescription} ({period_name})"'
    )
    billing({"last": [*USAGE[:2], *many]}, settings=settings, periods=["last"])
    assert set(by_description(store)) == {"Azure for Contoso: various (December 2025)"}
    billing({"last": USAGE[:2]}, settings=settings, periods=["last"])
    assert set(by_description(store)) == {
        "Azure for Contoso: Azure plan 1, Azure plan 2 (December 2025)"
    }


def test_an_empty_field_leaves_no_gap_in_the_description(billing, store):
    billing({"last": [row(category=None)]}, periods=["last"])
    [line] = lines(store)
    assert line["description"] == "Azure usage (December 2025)"


def test_quantity_and_unit_are_kept_only_when_the_line_has_one_unit(billing, store):
    billing({"last": USAGE}, settings='group_by = ["customer"]', periods=["last"])
    found = {line["customer"]: line for line in lines(store)}
    assert (found["Contoso"]["quantity"], found["Contoso"]["unit"]) == (None, None)  # hours, months
    assert (Decimal(found["Fabrikam"]["quantity"]), found["Fabrikam"]["unit"]) == (1, "1/Month")
    assert found["Contoso"]["usage_rows"] == 3


MARKUPS = """
group_by = ["meter_category"]
default_markup_percent = 10
[[modules.fake_billing.markups]]
meter_category = "storage"
percent = 30
[[modules.fake_billing.markups]]
customer = "Contoso"
percent = 20
[[modules.fake_billing.markups]]
customer = "contoso"
meter_category = "Storage"
percent = 40
"""


def test_the_most_specific_markup_wins(billing, store):
    billing({"last": USAGE}, settings=MARKUPS, periods=["last"])
    found = {(line["customer"], line["group_key"]): line for line in lines(store)}
    vm = found[("Contoso", "meter_category=Virtual Machines")]  # customer rule: 20 %
    assert (Decimal(vm["cost"]), Decimal(vm["price"]), Decimal(vm["markup_percent"])) == (
        Decimal("15.50"),
        Decimal("18.60"),
        20,
    )
    storage = found[("Contoso", "meter_category=Storage")]  # customer and category: 40 %
    assert Decimal(storage["price"]) == Decimal("3.15")
    other = found[("Fabrikam", "meter_category=Storage")]  # category: 30 %
    assert Decimal(other["price"]) == Decimal("9.10")


def test_a_line_over_several_markups_prices_each_part_and_rounds_once(billing, store):
    settings = MARKUPS.replace('group_by = ["meter_category"]', 'group_by = ["customer"]')
    billing({"last": USAGE}, settings=settings, periods=["last"])
    contoso = next(line for line in lines(store) if line["customer"] == "Contoso")
    # 15.50 × 1.20 + 2.25 × 1.40 = 18.60 + 3.15
    assert Decimal(contoso["price"]) == Decimal("21.75")
    assert contoso["markup_percent"] is None  # no one markup describes the line


@pytest.mark.parametrize(
    ("cost", "markup", "currency", "rounding", "price"),
    [
        ("10.005", "0", "GBP", "half_up", "10.01"),
        ("10.005", "0", "GBP", "half_even", "10.00"),
        ("10.015", "0", "GBP", "half_even", "10.02"),
        ("0.333333", "15", "EUR", "half_up", "0.38"),
        ("1234.5", "0", "JPY", "half_up", "1235"),
        ("1.2345", "0", "KWD", "half_up", "1.235"),
    ],
)
def test_prices_are_rounded_to_the_currency_minor_unit(
    billing, store, cost, markup, currency, rounding, price
):
    billing(
        {"last": [row(cost=cost, currency=currency)]},
        settings=f'default_markup_percent = "{markup}"\nrounding = "{rounding}"',
        periods=["last"],
    )
    [line] = lines(store)
    assert Decimal(line["price"]) == Decimal(price)  # exactly: no float ever touched it
    assert Decimal(line["cost"]) == Decimal(cost)


def test_money_never_goes_through_floats():
    # 0.1 + 0.2 in floats is 0.30000000000000004; a markup of 12.5 % on 3 × 0.1 is exact.
    assert sell_price({Decimal("12.5"): Decimal("0.1") * 3}, currency="GBP") == Decimal("0.34")
    assert round_money(Decimal("2.675"), "GBP") == Decimal("2.68")  # float rounds to 2.67
    settings = structure({"default_markup_percent": 0.1}, BillingSettings)
    assert settings.default_markup_percent == Decimal("0.1")


def test_a_line_is_charged_at_least_the_minimum_unless_it_is_a_credit(billing, store):
    usage = [
        row(TENANT_A, "0.20"),
        row(TENANT_B, "-5.00"),
        row(TENANT_B, "0.00", category="Storage"),
    ]
    billing({"last": usage}, settings="minimum_line_charge = 1.50", periods=["last"])
    found = {(line["customer"], line["group_key"]): Decimal(line["price"]) for line in lines(store)}
    assert found == {
        ("Contoso", "meter_category=Virtual Machines"): Decimal("1.50"),
        ("Fabrikam", "meter_category=Virtual Machines"): Decimal("-5.00"),
        ("Fabrikam", "meter_category=Storage"): Decimal("0.00"),
    }


def test_importing_a_period_again_updates_its_lines_and_never_duplicates_them(billing, store):
    first = billing({"last": USAGE}, periods=["last"])
    before = lines(store)
    assert first.count("invoice_lines").added == 3
    again = billing(periods=["last"])
    assert again.count("invoice_lines").unchanged == 3 and again.count("invoice_lines").added == 0
    assert lines(store) == before  # not even updated_at moved
    # More usage arrives, and Fabrikam's storage is gone from the export.
    billing({"last": [*USAGE[:3], row(TENANT_A, "4.50")]}, periods=["last"])
    after = {(line["customer"], line["group_key"]): line for line in lines(store, active=None)}
    assert len(after) == 3
    vm = after[("Contoso", "meter_category=Virtual Machines")]
    first = {(line["customer"], line["group_key"]): line["id"] for line in before}
    assert Decimal(vm["cost"]) == Decimal("20.00")
    assert vm["id"] == first[("Contoso", "meter_category=Virtual Machines")]
    assert vm["status"] == "estimate" and vm["usage_rows"] == 3
    gone = after[("Fabrikam", "meter_category=Storage")]
    assert (gone["active"], gone["status"]) == (False, "removed") and gone["inactive_since"]
    # It comes back: the same line, active again.
    billing({"last": USAGE}, periods=["last"])
    back = {(line["customer"], line["group_key"]): line for line in lines(store)}
    assert back[("Fabrikam", "meter_category=Storage")]["id"] == gone["id"]
    assert back[("Fabrikam", "meter_category=Storage")]["status"] == "estimate"


def test_an_invoice_supersedes_the_estimate_of_its_month_and_currency(billing, store):
    estimate = [*USAGE, row(TENANT_B, "3.00", currency="EUR")]
    billing({"last": estimate}, periods=["last"])
    billed = [
        row(r.tenant_id, str(r.cost * 2), invoice="G000000001", category=r.meter_category)
        for r in USAGE
    ]
    result = billing({"G000000001": billed}, periods=["G000000001"])
    assert result.count("invoice_lines").deactivated == 3  # the GBP estimates
    every = lines(store, active=None)
    superseded = [line for line in every if line["status"] == "superseded"]
    assert len(superseded) == 3 and all(
        line["superseded_by"] == "G000000001" and line["active"] is False for line in superseded
    )
    in_force = lines(store)
    assert {(line["source"], line["currency"]) for line in in_force} == {
        ("G000000001", "GBP"),
        ("unbilled", "EUR"),  # another currency's invoice is not out yet
    }
    assert all(line["status"] == "billed" for line in in_force if line["source"] != "unbilled")
    # An estimate never comes back for a month its invoice has billed.
    again = billing({"last": estimate}, periods=["last"])
    outcomes = {(i.currency, i.outcome) for i in again.imports}
    assert outcomes == {("GBP", "already_billed"), ("EUR", "imported")}
    assert lines(store) == in_force
    # The report counts the invoice's lines, not the estimate's.
    with store.read() as connection:
        report = billing_report(connection, FAKE, "2025-12", now=NOW)
    gbp = report.totals()["GBP"]
    assert gbp["cost"] == sum((r.cost * 2 for r in USAGE), Decimal(0))


def test_usage_no_mapping_claims_is_reported_and_never_billed(billing, store):
    usage = [
        *USAGE,
        row(TENANT_C, "100.00", name="Do Not Bill Ltd"),
        row(TENANT_D, "40.00", name="Unknown Inc"),
        row(TENANT_D, "2.00", name="Unknown Inc", category="Storage"),
    ]
    result = billing({"last": usage}, periods=["last"])
    assert result.outcome == "succeeded"
    assert {line["customer"] for line in lines(store)} == {"Contoso", "Fabrikam"}
    assert sum(Decimal(line["cost"]) for line in lines(store)) == Decimal("24.75")
    counts = {tenant: c for (kind, tenant), c in _tenant_counts(store, result.run_id, "usage")}
    assert counts[TENANT_D]["skipped"] == 2 and counts[TENANT_C]["skipped"] == 1
    assert counts[TENANT_A]["added"] == 3
    reasons = [p.reason for p in result.problems if p.tenant_id == TENANT_D]
    assert reasons and "no tenant mapping" in reasons[0] and "42 GBP" in reasons[0]
    with store.read() as connection:
        report = billing_report(connection, FAKE, "2025-12", now=NOW)
    unmatched = {(u.tenant_id, u.reason, u.usage_rows, u.cost) for u in report.unmatched}
    assert unmatched == {
        (TENANT_C, "do_not_import", 1, Decimal("100")),
        (TENANT_D, "unmapped", 2, Decimal("42")),
    }
    assert report.totals()["GBP"]["unmatched_cost"] == Decimal("142")
    table = as_table(report)
    assert "Unknown Inc" in table and "no tenant mapping" in table and "do not import" in table


def _tenant_counts(store: Store, run_id: int, kind: str) -> list[tuple[tuple[str, str], dict]]:
    counts = schema.sync_counts
    with store.read() as connection:
        found = connection.execute(
            sa.select(counts).where(counts.c.run_id == run_id, counts.c.entity_kind == kind)
        ).mappings()
        return [((row["entity_kind"], row["tenant_id"]), dict(row)) for row in found]


def test_stored_tenants_get_their_customers_as_a_sync_would(billing, store):
    now = datetime.now(UTC)
    with store.unit() as connection:
        connection.execute(
            sa.insert(schema.tenants).values(
                module="microsoft_csp",
                connection="main",
                tenant_id=TENANT_D,
                name="Unknown Inc",
                access="reseller_only",
                active=True,
                created_at=now,
                updated_at=now,
                attributes={},
            )
        )
    billing({"last": [*USAGE[:1], row(TENANT_D, "40.00")]}, periods=["last"])
    assert {line["customer"] for line in lines(store)} == {"Contoso"}  # not without the setting
    billing(periods=["last"], integrator="create_customers_from_tenants = true")
    assert {line["customer"] for line in lines(store)} == {"Contoso", "Unknown Inc"}


def test_a_closed_month_is_left_as_it_is_unless_forced(billing, store):
    billing({"last": USAGE}, periods=["last"])
    before = lines(store)
    with store.unit() as connection:
        assert close_month(connection, FAKE, "2025-12", by="test", note="invoiced")
    billing.plugin.calls.clear()
    skipped = billing({"last": [row(TENANT_A, "99.00")]}, periods=["last"])
    assert billing.plugin.calls == []  # a closed month is not even fetched
    assert [i.outcome for i in skipped.imports] == ["closed"] and skipped.outcome == "succeeded"
    assert "invoiced" in skipped.imports[0].detail and lines(store) == before
    # An invoice of the closed month is fetched, and left too.
    invoice = billing(
        {"G0000001": [row(TENANT_A, "99.00", invoice="G0000001")]}, periods=["G0000001"]
    )
    assert [i.outcome for i in invoice.imports] == ["closed"] and lines(store) == before
    forced = billing({"last": [row(TENANT_A, "99.00")]}, periods=["last"], force=True)
    assert forced.count("invoice_lines").updated == 1
    assert [Decimal(line["cost"]) for line in lines(store)] == [Decimal("99.00")]
    assert any(p.outcome == "warning" and "changed (--force)" in p.reason for p in forced.problems)


def test_a_month_closes_by_itself_close_after_days_after_it_ends(billing, store):
    usage = {"last": USAGE}
    settings = "close_after_days = 20"
    assert (
        billing(usage, settings=settings, periods=["last"], now=NOW).imports[0].outcome
        == "imported"
    )
    late = NOW + timedelta(days=30)  # 2026-02-14: December closed on 2026-01-21
    result = billing(usage, settings=settings, periods=["2025-12"], now=late)
    assert [i.outcome for i in result.imports] == ["closed"]
    assert "close_after_days = 20" in result.imports[0].detail


def test_no_data_for_a_period_is_an_outcome_not_a_failure(billing, store):
    result = billing(
        {"current": [Notice(code="no_data", message="no unbilled usage in GBP yet")]},
        periods=["current"],
    )
    assert result.outcome == "succeeded" and lines(store) == []
    [summary] = result.imports
    assert (summary.outcome, summary.period, summary.detail) == (
        "no_data",
        "2026-01",
        "no unbilled usage in GBP yet",
    )


def test_a_stream_that_fails_or_ends_incomplete_writes_nothing(billing, store):
    billing({"last": USAGE}, periods=["last"])
    before = lines(store)
    failing = billing(
        {"last": [row(TENANT_A, "500.00"), ConnectionError("the blob stopped halfway")]},
        periods=["last"],
    )
    assert failing.outcome == "completed_with_errors"
    assert [i.outcome for i in failing.imports] == ["failed"]
    assert "the blob stopped halfway" in failing.imports[0].detail
    incomplete = billing(
        {"last": [row(TENANT_A, "500.00"), Checkpoint(bookmark=None, complete=False)]},
        periods=["last"],
    )
    assert [i.outcome for i in incomplete.imports] == ["incomplete"]
    assert lines(store) == before


def test_a_malformed_row_is_counted_and_the_rest_billed(billing, store):
    usage = [
        *USAGE,
        row(TENANT_A, "1.00", period="December"),
        row(TENANT_A, "1.00", currency="POUNDS"),
        RecordError(entity_id="blob-1 line 7", reason="not a JSON line"),
    ]
    result = billing({"last": usage}, periods=["last"])
    assert result.outcome == "completed_with_errors"
    assert result.count("usage").failed == 3
    assert len(lines(store)) == 3
    reasons = " | ".join(p.reason for p in result.problems if p.outcome == "failed")
    assert "not YYYY-MM" in reasons and "currency" in reasons and "not a JSON line" in reasons


def test_a_dry_run_writes_nothing_and_lists_each_change(billing, store):
    result = billing({"last": USAGE}, periods=["last"], dry_run=True)
    assert result.dry_run and lines(store, active=None) == []
    assert [c.action for c in result.changes] == ["added"] * 3
    with store.read() as connection:
        assert connection.execute(sa.select(schema.sync_runs)).all() == []


def test_the_report_gives_per_customer_totals_in_every_format(billing, store):
    billing(
        {"last": [*USAGE, row(TENANT_D, "3.00", name="Unknown Inc")]},
        settings="default_markup_percent = 10",
        periods=["last"],
    )
    with store.read() as connection:
        report = billing_report(connection, FAKE, "2025-12", now=NOW)
    data = as_data(report)
    assert data["customers"] == [
        {
            "customer": "Contoso",
            "currency": "GBP",
            "lines": 2,
            "cost": "17.75",
            "price": "19.53",
            "margin": "1.78",
            "sources": ["unbilled"],
        },
        {
            "customer": "Fabrikam",
            "currency": "GBP",
            "lines": 1,
            "cost": "7.00",
            "price": "7.70",
            "margin": "0.70",
            "sources": ["unbilled"],
        },
    ]
    assert data["totals"]["GBP"]["cost"] == "24.75"
    assert data["totals"]["GBP"]["unmatched_cost"] == "3.00"
    assert data["unmatched"][0]["tenant_id"] == TENANT_D
    csv_rows = as_csv(report).splitlines()
    assert csv_rows[0].startswith("row,customer,tenant_id,currency,lines")
    assert "customer,Contoso,,GBP,2,,17.75,19.53,1.78,unbilled," in csv_rows
    assert any(line.startswith("unmatched,Unknown Inc") for line in csv_rows)
    table = as_table(report)
    assert "Contoso" in table and "19.53" in table and "total" in table


def test_periods_asked_for_mean_what_they_say():
    assert period_request("current", NOW).month == "2026-01"
    assert period_request("last", NOW).month == "2025-12"
    assert period_request("2026-01", NOW).period == "current"  # this month is unbilled
    earlier = period_request("2025-11", NOW)
    assert (earlier.period, earlier.month, earlier.unbilled) == ("2025-11", "2025-11", False)
    assert (period_request("latest", NOW).month, period_request("G016907411", NOW).month) == (
        None,
        None,
    )
    for bad in ("2026-02", "2025-13", "x", "next month"):
        with pytest.raises(PeriodError):
            period_request(bad, NOW)


@pytest.mark.parametrize(
    ("toml", "problem"),
    [
        ('group_by = ["tag"]', 'group_by: "tag" groups by the value of one tag'),
        ('group_by = ["brand"]', "modules.fake_billing.group_by[0]: expected one of"),
        (
            'description = "Azure {Brand}"',
            "modules.fake_billing.description: unknown placeholder {Brand}",
        ),
        ("default_markup_percent = -100", "a percentage must be above -100"),
        ("minimum_line_charge = -1", "an amount cannot be negative"),
        (
            "[[modules.fake_billing.markups]]\npercent = 5",
            "markups[0]: a markup rule names a customer",
        ),
        ('periods = ["yesterday"]', "modules.fake_billing.periods[0]: expected one of"),
        ("close_after_days = -1", "close_after_days: expected a number of days"),
    ],
)
def test_billing_settings_are_checked_with_their_key_paths(
    write_config, host_factory, toml, problem
):
    config = core_config(write_config, toml)
    host = host_factory(config, (FakeBilling(), "fake"))
    with pytest.raises(ConfigError) as caught:
        host.active_modules()
    assert any(problem in line for line in caught.value.problems), caught.value.problems


def test_hook_fetch_usage_rows_become_lines_through_the_core(billing, store):
    result = billing({"current": [row(period="2026-01")], "latest": [], "last": []})
    assert billing.plugin.calls == ["latest", "last", "current"]  # the scheduled periods
    assert [line["period"] for line in lines(store)] == ["2026-01"]
    assert result.outcome == "succeeded"


# --- the plugin against the emulator -----------------------------------------------------------


def billing_config(emulator, write_config, settings: str = "", csp: bool = True) -> Any:
    partner = next(iter(emulator.world.partners.values()))
    endpoints = "\n".join(f'{key} = "{value}"' for key, value in emulator.endpoints().items())
    csp_table = f"""
[modules.microsoft_csp]
enabled = true

[[modules.microsoft_csp.connections]]
name = "main"
tenant_id = "{partner.tenant_id}"
partner_center_app = {{ client_id = "{partner.partner_center_app.client_id}", client_secret = {{ env = "TEST_PC_SECRET" }} }}
gdap_app = {{ client_id = "{partner.gdap_app.client_id}", client_secret = {{ env = "TEST_GDAP_SECRET" }} }}
"""
    return load_config(
        write_config(
            f"""
[endpoints]
{endpoints}

[integrator]
create_customers_from_tenants = true
{csp_table if csp else ""}
[modules.consumption_billing]
enabled = true
{settings}
"""
        )
    )


class Microsoft:
    """The emulator, a config pointing at it, and billing runs with recorded waits."""

    def __init__(self, emulator, store, write_config, monkeypatch) -> None:
        self.emulator = emulator
        self.store = store
        self.write_config = write_config
        self.partner = next(iter(emulator.world.partners.values()))
        monkeypatch.setenv("TEST_PC_SECRET", self.partner.partner_center_app.secret)
        monkeypatch.setenv("TEST_GDAP_SECRET", self.partner.gdap_app.secret)
        self.sleeps: list[float] = []
        emulator.app.state["billing_running_polls"] = 0
        self.config = billing_config(emulator, write_config)
        self.synced = False

    def configure(self, settings: str) -> None:
        self.config = billing_config(self.emulator, self.write_config, settings)

    def sync_tenants(self) -> None:
        host = PluginHost.load(self.config)
        SyncEngine(self.store, self.config, host).run(module="microsoft_csp", only=["tenants"])
        self.synced = True

    def run(self, *periods: str, dry_run: bool = False, force: bool = False) -> Any:
        if not self.synced:
            self.sync_tenants()
        host = PluginHost.load(self.config)
        http = HttpClient(
            verify=self.config.endpoints.verify,
            request_log=StoreRequestLog(self.store),
            sleep=self.sleeps.append,
        )
        runner = BillingRunner(
            self.store, self.config, host, http=http, clock=lambda: self.emulator.world.now
        )
        [result] = runner.run(
            "consumption_billing", periods=list(periods) or None, dry_run=dry_run, force=force
        )
        return result

    def reseller_rows(self, period: str, currency: str | None = None) -> list[Any]:
        world = self.emulator.world
        return [
            r
            for r in world.usage
            if r.period == period
            and world.customers[r.customer_tenant].reseller
            and (currency is None or r.fields["BillingCurrency"] == currency)
        ]


@pytest.fixture
def microsoft(emulator, store, write_config, monkeypatch) -> Microsoft:
    return Microsoft(emulator, store, write_config, monkeypatch)


def _total(rows: list[Any]) -> Decimal:
    return sum((Decimal(r.fields["BillingPreTaxTotal"]) for r in rows), Decimal(0))


def test_the_scheduled_periods_import_invoices_and_estimates_from_the_emulator(microsoft, store):
    result = microsoft.run()
    assert result.outcome == "succeeded", result.problems
    outcomes = {(i.requested, i.period, i.currency): i.outcome for i in result.imports}
    # The latest invoices (one per currency) first; then last month is billed already;
    # then this month's estimate, in each currency the partner's invoices are in.
    assert outcomes == {
        ("latest", "2025-12", "EUR"): "imported",
        ("latest", "2025-12", "GBP"): "imported",
        ("latest", "2025-12", "USD"): "imported",
        ("last", "2025-12", None): "already_billed",
        ("current", "2026-01", "EUR"): "imported",
        ("current", "2026-01", "GBP"): "imported",
        ("current", "2026-01", "USD"): "imported",
    }
    with store.read() as connection:
        for month, period in (("2025-12", "last"), ("2026-01", "current")):
            report = billing_report(connection, "consumption_billing", month, now=NOW)
            totals = report.totals()
            for currency in ("GBP", "EUR", "USD"):
                # Every reseller tenant is mapped (create_customers_from_tenants): the report's
                # cost is exactly what the usage rows of the month cost.
                assert totals[currency]["cost"] == _total(microsoft.reseller_rows(period, currency))
            assert not report.unmatched
    billed = [line for line in lines(store) if line["period"] == "2025-12"]
    assert billed and all(
        line["status"] == "billed" and line["source"].startswith("G") for line in billed
    )
    assert {line["source"] for line in billed} == {
        i.source for i in result.imports if i.requested == "latest"
    }
    assert microsoft.emulator.world.invoices[0] in {line["source"] for line in billed}


def test_a_running_export_is_polled_as_retry_after_says(microsoft, store):
    microsoft.emulator.app.state.update(billing_running_polls=3, billing_retry_after=7)
    microsoft.configure('currencies = ["GBP"]')
    result = microsoft.run("current")
    assert result.outcome == "succeeded"
    assert microsoft.sleeps == [7, 7, 7]
    assert [i.outcome for i in result.imports] == ["imported"]


def test_an_export_still_running_at_the_limit_is_given_up_until_the_next_run(microsoft, store):
    microsoft.emulator.app.state.update(billing_running_polls=1000, billing_retry_after=25)
    microsoft.configure('currencies = ["GBP", "EUR"]\nexport_timeout_minutes = 1')
    result = microsoft.run("current")
    assert sum(microsoft.sleeps) == 120  # a minute for each currency, at most
    assert result.outcome == "completed_with_errors"
    assert all("still preparing the export after 1 minutes" in p.reason for p in result.problems)
    assert lines(store) == []


def test_no_data_available_is_a_clear_outcome_not_a_failure(microsoft, store):
    microsoft.emulator.app.state["billing_no_data"] = True
    microsoft.configure('currencies = ["GBP"]')
    result = microsoft.run("current", "G000000000")
    assert result.outcome == "succeeded"
    assert [i.outcome for i in result.imports] == ["no_data", "no_data"]
    assert "No data available" in result.imports[0].detail
    assert lines(store) == []


@pytest.mark.parametrize("data_format", ["compressedJSON", "compressedJSONLines"])
def test_both_data_formats_and_a_manifest_of_several_blobs(microsoft, store, data_format):
    microsoft.emulator.app.state.update(billing_data_format=data_format, billing_rows_per_blob=3)
    microsoft.configure('currencies = ["GBP"]\ngroup_by = ["customer"]')
    result = microsoft.run("current")
    [summary] = result.imports
    expected = microsoft.reseller_rows("current", "GBP")
    assert (summary.outcome, summary.rows) == ("imported", len(expected))
    assert sum(Decimal(line["cost"]) for line in lines(store)) == _total(expected)
    manifests = microsoft.emulator.app.state["billing_manifests"].values()
    assert {m["dataFormat"] for m in manifests} == {data_format}
    assert all(m["blobCount"] > 1 for m in manifests)


def test_the_basic_attribute_set_reads_the_unit_from_unit_type(microsoft, store):
    microsoft.configure(
        'currencies = ["GBP"]\nattribute_set = "basic"\ngroup_by = ["subscription"]\n'
        'description = "Azure subscription {SubscriptionId} ({period})"'
    )
    result = microsoft.run("current")
    assert result.outcome == "succeeded", result.problems
    found = lines(store)
    assert found and all(line["description"].startswith("Azure subscription ") for line in found)
    assert _total(microsoft.reseller_rows("current", "GBP")) == sum(
        Decimal(line["cost"]) for line in found
    )
    requests = [r for r in microsoft.emulator.app.requests if "usage/unbilled/export" in r[1]]
    assert requests


def test_a_billing_month_named_is_read_from_its_invoices(microsoft, store):
    microsoft.configure('currencies = ["GBP"]')
    estimate = microsoft.run("last")  # the estimate first
    result = microsoft.run("2025-12")
    assert {i.source for i in result.imports} == {
        i["id"]
        for i in emulated_billing.partner_invoices(microsoft.emulator.world, microsoft.partner)[:3]
    }
    assert sum(i.superseded for i in result.imports) == estimate.imports[0].lines
    by_invoice = microsoft.run(microsoft.emulator.world.invoices[0])
    assert [i.outcome for i in by_invoice.imports] == ["imported"]
    assert by_invoice.imports[0].unchanged == by_invoice.imports[0].lines


def _latent(microsoft: Microsoft, period: str, charge_start: str, cost: str) -> Any:
    """A GBP row of a reseller customer, charged in ``period`` (an export's) but dated in the
    earlier cycle ``charge_start`` names: latent usage charged late."""
    from halo_microsoft_emulator.world import UsageRow

    model = microsoft.reseller_rows(period, "GBP")[0]
    fields = {
        **model.fields,
        "ChargeStartDate": charge_start,
        "UsageDate": f"{charge_start[:8]}28T00:00:00",
        "MeterCategory": "Latent Meter",
        "Quantity": "1",
        "UnitPrice": cost,
        "BillingPreTaxTotal": cost,
    }
    latent = UsageRow(model.customer_tenant, period, fields)
    with microsoft.emulator.world.lock:
        microsoft.emulator.world.usage.append(latent)
    return latent


def test_latent_usage_is_billed_in_the_month_that_charges_it(microsoft, store):
    """Latent usage carries its earlier cycle's ChargeStartDate (daily-rated-usage-recon-files):
    it is billed with the invoice or estimate that charges it, never in that earlier month,
    which may be closed or billed already."""
    on_invoice = _latent(microsoft, "last", "2025-11-01T00:00:00", "12.34")
    on_estimate = _latent(microsoft, "current", "2025-12-01T00:00:00", "5.67")
    with store.unit() as connection:
        assert close_month(connection, "consumption_billing", "2025-11", by="test")
    microsoft.configure('currencies = ["GBP"]')
    result = microsoft.run()  # latest, last, current
    assert result.outcome == "succeeded", result.problems
    assert {(i.period, i.outcome) for i in result.imports} == {
        ("2025-12", "imported"),  # the invoices, latent row and all
        ("2025-12", "already_billed"),  # last: billed already
        ("2026-01", "imported"),  # the estimate, latent row and all
    }
    with store.read() as connection:
        for month, period in (("2025-12", "last"), ("2026-01", "current")):
            report = billing_report(connection, "consumption_billing", month, now=NOW)
            assert report.totals()["GBP"]["cost"] == _total(microsoft.reseller_rows(period, "GBP"))
    latent_lines = [line for line in lines(store) if "Latent Meter" in line["description"]]
    found = sorted((line["period"], line["status"], Decimal(line["cost"])) for line in latent_lines)
    assert found == [
        ("2025-12", "billed", Decimal(on_invoice.fields["BillingPreTaxTotal"])),
        ("2026-01", "estimate", Decimal(on_estimate.fields["BillingPreTaxTotal"])),
    ]


def test_an_invoice_partner_center_does_not_list_is_billed_in_its_manifests_month(
    microsoft, store, monkeypatch
):
    from halo_microsoft_emulator.world import UsageRow

    model = microsoft.reseller_rows("last", "GBP")[0]
    fields = {**model.fields, "ChargeStartDate": "2025-10-01T00:00:00"}
    with microsoft.emulator.world.lock:
        microsoft.emulator.world.usage.append(UsageRow(model.customer_tenant, "G999999999", fields))
    result = microsoft.run("G999999999")
    assert result.outcome == "succeeded", result.problems
    assert [(i.period, i.source, i.outcome) for i in result.imports] == [
        ("2025-12", "G999999999", "imported")  # BillingMonth=202512 in the manifest
    ]
    # A manifest naming no month either: nothing is guessed, and the run says how to go on.
    from halo_consumption_billing.export import Manifest

    monkeypatch.setattr(Manifest, "billing_month", property(lambda self: None))
    unknown = microsoft.run("G999999999")
    assert unknown.outcome == "completed_with_errors"
    [problem] = [p for p in unknown.problems if p.outcome == "failed"]
    assert "billing month of this export is unknown" in problem.reason
    assert "billing import YYYY-MM" in problem.reason
    assert [line["period"] for line in lines(store)] == ["2025-12"]  # as the first run left it


def test_the_sas_token_never_reaches_a_log(microsoft, store):
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    out = io.StringIO()
    configure_logging(format="json", level="debug", stream=out)
    try:
        microsoft.configure('currencies = ["GBP"]')
        result = microsoft.run("current")
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
        structlog.reset_defaults()
    assert result.outcome == "succeeded"
    # The signatures the blobs were read with, as the emulator saw them.
    signatures = {
        match
        for _, path, _ in microsoft.emulator.app.requests
        if path.startswith("/blob/")
        for match in re.findall(r"[?&]sig=([^&]+)", path)
    }
    assert signatures
    with store.read() as connection:
        urls = [row.url for row in connection.execute(sa.select(schema.request_log))]
        problems = [row.reason for row in connection.execute(sa.select(schema.sync_problems))]
    blob_urls = [url for url in urls if "/blob/" in url]
    assert blob_urls and all("sig=[redacted]" in url for url in blob_urls)
    text = out.getvalue() + "\n".join(urls) + "\n".join(problems)
    assert not re.search(r"sig=(?!\[redacted\])", text)
    for signature in signatures:
        assert signature not in text and unquote(signature) not in text


def test_a_missing_billing_permission_says_the_fix(microsoft, store):
    with microsoft.emulator.world.lock:
        microsoft.partner.gdap_app.permissions.remove("PartnerBilling.Read.All")
    microsoft.configure('currencies = ["GBP"]')
    result = microsoft.run("current")
    assert result.outcome == "completed_with_errors"
    [problem] = [p for p in result.problems if p.outcome == "failed"]
    assert "PartnerBilling.Read.All" in problem.reason and "admin consent" in problem.reason
    assert microsoft.partner.tenant_id in problem.reason


def test_config_check_says_what_the_module_needs(emulator, write_config, monkeypatch):
    def problems(config: Any) -> list[str]:
        try:
            PluginHost.load(config).active_modules()
        except ConfigError as exc:
            return exc.problems
        return []

    alone = billing_config(emulator, write_config, csp=False)
    assert any("enable [modules.microsoft_csp]" in p for p in problems(alone))
    unknown = billing_config(emulator, write_config, 'connections = ["elsewhere"]')
    assert any(
        "modules.consumption_billing.connections: 'elsewhere' is not a connection" in p
        for p in problems(unknown)
    )
    basic = billing_config(emulator, write_config, 'attribute_set = "basic"')
    found = problems(basic)
    assert any("modules.consumption_billing.group_by: 'meter_category' needs" in p for p in found)
    assert any("modules.consumption_billing.description: {MeterCategory}" in p for p in found)
    assert problems(billing_config(emulator, write_config)) == []


# --- reading exports -------------------------------------------------------------------------


def test_attribute_names_are_read_whatever_their_case_and_layout():
    from halo_consumption_billing.export import read_records
    from halo_consumption_billing.usage import usage_line

    record = {
        "customerId": TENANT_A.upper(),
        "CUSTOMERNAME": "Contoso",
        "chargeStartDate": "2025-12-01T00:00:00Z",
        "billingPreTaxTotal": 1.5,
        "billingCurrency": "gbp",
        "InvoiceNumber": "",
        "Quantity": "2",
        "UnitType": "1 Hour",
        "ResourceUri": "/subscriptions/s/resourceGroups/RG-Web/providers/x",
        "Tags": '{"env":"prod"}',
    }
    text = json.dumps(record)
    layouts = {
        "gzip lines": gzip.compress(f"\n{text}\n\n{text}\n".encode()),
        "plain lines": f"\ufeff{text}\n{text}".encode(),
        "gzip array": gzip.compress(f" [ {text},\n {text} ]".encode()),
    }
    for name, data in layouts.items():
        found = list(read_records(io.BytesIO(data), "blob"))
        assert len(found) == 2, name
        line = usage_line(found[0].values, found[0].where, "2025-12")
        assert isinstance(line, UsageLine), (name, line)
        assert (line.tenant_id, line.period, line.invoice_id, line.currency) == (
            TENANT_A,
            "2025-12",
            None,
            "GBP",
        )
        assert (line.cost, line.quantity, line.unit, line.resource_group, line.tags) == (
            Decimal("1.5"),
            Decimal(2),
            "1 Hour",
            "RG-Web",
            {"env": "prod"},
        )
    bad = list(read_records(io.BytesIO(b'{"CustomerId": 1}\nnot json\n[1]\n'), "blob"))
    assert [type(r).__name__ for r in bad] == ["Record", "BadRecord", "BadRecord"]
    missing = usage_line(bad[0].values, "blob line 1", "2025-12")
    assert isinstance(missing, RecordError) and "BillingPreTaxTotal" in missing.reason.replace(
        "billingpretaxtotal", "BillingPreTaxTotal"
    )


def test_a_row_is_billed_in_its_exports_month_and_keeps_its_charge_start_date():
    from halo_consumption_billing.export import manifest_of
    from halo_consumption_billing.usage import usage_line

    latent = {
        "customerid": TENANT_A,
        "chargestartdate": "2025-11-01T00:00:00",  # latent usage of the cycle before
        "usagedate": "2025-11-30T00:00:00",
        "billingpretaxtotal": "3.50",
        "billingcurrency": "GBP",
        "invoicenumber": "G000000001",
    }
    line = usage_line(latent, "blob line 1", "2025-12")
    assert isinstance(line, UsageLine), line
    assert line.invoice_id == "G000000001"
    # A billed export's row with no InvoiceNumber is its invoice's, not an estimate.
    bare = usage_line({**latent, "invoicenumber": ""}, "blob line 3", "2025-12", "G000000002")
    assert isinstance(bare, UsageLine) and bare.invoice_id == "G000000002"
    assert usage_line({**latent, "invoicenumber": None}, "x", "2025-12").invoice_id is None
    assert (line.period, line.usage_date.isoformat()) == ("2025-12", "2025-11-30")
    assert line.attributes["ChargeStartDate"] == "2025-11-01T00:00:00"
    # No ChargeStartDate, or one that is not a date, costs the row nothing now.
    for value in (None, "soon"):
        other = usage_line({**latent, "chargestartdate": value}, "blob line 2", "2025-12")
        assert isinstance(other, UsageLine) and other.period == "2025-12", other
    # The manifest names the export's month as the manifest page's example does.
    body = {
        "dataFormat": "compressedJSON",
        "sasToken": "sig=x",
        "blobs": [],
        "rootDirectory": "https://adlsreconbuprodeastus201.blob.core.windows.net/"
        "billedusagefastpath/v1/PartnerTenantId=0e195b37-4574-4539-bc42-0e539b9684c0/"
        "BillingMonth=202310/InvoiceId=G031809528/InvoiceVersion=202311/Fragment=basic/"
        "PartitionType=default",
    }
    assert manifest_of(body).billing_month == "2023-10"
    for root in ("https://blob/x/BillingMonth=202313/y", "https://blob/x/y"):
        assert manifest_of({**body, "rootDirectory": root}).billing_month is None


class Pages:
    """An HTTP client answering Partner Center collection pages in turn."""

    def __init__(self, *pages: list[dict[str, Any]]) -> None:
        self.pages = list(pages)
        self.calls = 0

    def json(self, method: str, url: str, **_: Any) -> dict[str, Any]:
        items = self.pages[self.calls]
        self.calls += 1
        body: dict[str, Any] = {"totalCount": len(items), "items": items}
        if self.calls < len(self.pages):
            body["links"] = {
                "next": {
                    "uri": f"/invoices?size=2&offset={2 * self.calls}",
                    "method": "GET",
                    "headers": [{"key": "MS-ContinuationToken", "value": f"t{self.calls}"}],
                }
            }
        return body


def _invoice_item(invoice_id: str, start: Any = "2025-12-01T00:00:00Z", **more: Any) -> dict:
    return {
        "id": invoice_id,
        "invoiceDate": "2026-01-02T00:00:00Z",
        "billingPeriodStartDate": start,
        "currencyCode": "GBP",
        "documentType": "invoice",
        **more,
    }


def test_an_invoice_listed_on_every_page_is_exported_once():
    """Partner Center ignores size and offset for modern invoices ("For all modern commercial
    purchases, pagesize & offset will be ignored"): they may come again on each page."""
    from halo_consumption_billing.invoices import list_invoices, of_month

    modern = [_invoice_item("G000000001"), _invoice_item("G000000002", currencyCode="EUR")]
    client = Pages(
        [*modern, _invoice_item("D0100001", start="2025-11-01T00:00:00Z")],
        [*modern, _invoice_item("D0100002", start="2025-10-01T00:00:00Z")],
        [_invoice_item("g000000001", currencyCode="USD"), modern[1]],
    )
    found = list_invoices(client, "https://api.partnercenter.microsoft.com", {})
    assert client.calls == 3
    assert [i.id for i in found] == ["G000000001", "G000000002", "D0100001", "D0100002"]
    assert found[0].currency == "GBP"  # the first seen is kept
    assert [i.id for i in of_month(found, "2025-12")] == ["G000000002", "G000000001"]


def test_one_unreadable_invoice_date_keeps_the_other():
    from halo_consumption_billing.invoices import list_invoices, of_month

    client = Pages(
        [
            _invoice_item("G000000001", invoiceDate="2 Jan 2026"),  # the period still tells
            _invoice_item("G000000002", start="December", invoiceDate="2026-01-02T00:00:00Z"),
            _invoice_item("G000000003", start="December", invoiceDate="soon"),
        ]
    )
    found = {i.id: i for i in list_invoices(client, "https://pc", {})}
    assert (found["G000000001"].billing_month, found["G000000001"].invoice_date) == (
        "2025-12",
        None,
    )
    assert found["G000000002"].billing_month == "2025-12"  # the month before its date
    assert str(found["G000000002"].invoice_date) == "2026-01-02"
    assert found["G000000003"].billing_month is None
    assert [i.id for i in of_month(found.values(), "2025-12")] == ["G000000001", "G000000002"]


@pytest.mark.parametrize(
    ("toml", "problem"),
    [
        (
            'currencies = ["GBP", "EUR", "gbp"]',
            'modules.consumption_billing: currencies: "GBP" is listed twice (currency codes are '
            "read whatever their case), so the unbilled usage in that currency would be exported "
            'twice and billed twice: list each once, currencies = ["GBP", "EUR"]',
        ),
        (
            'connections = ["main", "main"]',
            'modules.consumption_billing: connections: "main" is listed twice, so that '
            "connection's usage would be exported twice and billed twice: list each once, "
            'connections = ["main"]',
        ),
    ],
)
def test_a_currency_or_connection_listed_twice_is_refused(emulator, write_config, toml, problem):
    config = billing_config(emulator, write_config, toml)
    with pytest.raises(ConfigError) as caught:
        PluginHost.load(config).active_modules()
    assert problem in caught.value.problems, caught.value.problems


def _blob(path: Path, rows: int) -> int:
    """A gzip of JSON Lines written a line at a time (never whole in memory); returns the
    size of the JSON it holds."""
    written = 0
    with gzip.open(path, "wt", encoding="utf-8") as out:
        for i in range(rows):
            written += out.write(
                json.dumps(
                    {
                        "CustomerId": TENANT_A if i % 3 else TENANT_B,
                        "CustomerName": "Contoso",
                        "InvoiceNumber": "G1",
                        "SubscriptionId": SUB_1 if i % 2 else SUB_2,
                        "SubscriptionDescription": "Azure plan",
                        "ChargeStartDate": "2025-12-01T00:00:00",
                        "UsageDate": f"2025-12-{1 + i % 28:02d}T00:00:00",
                        "MeterCategory": ("Virtual Machines", "Storage", "Bandwidth")[i % 3],
                        "MeterName": "D2s v3",
                        "ResourceGroup": f"rg-{i % 5}",
                        "ResourceURI": f"/subscriptions/{SUB_1}/resourceGroups/rg/providers/x/vm-{i}",
                        "Unit": "1 Hour",
                        "Tags": '{"env":"prod"}',
                        "Quantity": i % 800,
                        "UnitPrice": 0.096,
                        "BillingPreTaxTotal": f"{(i % 800) * 0.096:.6f}",
                        "BillingCurrency": "GBP",
                    }
                )
                + "\n"
            )
    return written


@pytest.fixture
def blob_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A storage stand-in in a process of its own (so that measuring this process's memory
    measures the client alone): plain HTTP serving the files of a folder; the SAS query the
    client appends is ignored."""
    folder = tmp_path / "storage"
    folder.mkdir()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "http.server",
            str(port),
            "--bind",
            "127.0.0.1",
            "--directory",
            str(folder),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            with socket.socket() as attempt:
                if attempt.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert time.monotonic() < deadline, "the blob server did not start"
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}", folder
    finally:
        server.terminate()
        server.wait(10)


def test_memory_does_not_grow_with_the_blob(blob_server):
    """Download, gunzip, parse, translate and group a large blob: the peak of memory is the
    same for a blob eight times larger (rows are streamed, never collected)."""
    from halo_consumption_billing.export import Manifest, PartnerBillingExports
    from halo_consumption_billing.usage import usage_line

    root, folder = blob_server
    exports = PartnerBillingExports(
        HttpClient(), "https://unused", dict, timeout_seconds=1, poll_seconds=1
    )
    settings = BillingSettings(group_by=(GroupBy.SUBSCRIPTION, GroupBy.METER_CATEGORY))
    matches = {
        TENANT_A: TenantMatch(1, "Contoso", None),
        TENANT_B: TenantMatch(2, "Fabrikam", None),
    }
    peaks, sizes = {}, {}
    for rows in (2_000, 16_000):
        name = f"part-{rows:05d}.c000.json.gz"
        sizes[rows] = _blob(folder / name, rows)
        manifest = Manifest(
            id=str(rows),
            data_format="compressedJSONLines",
            root_directory=root,
            sas_token="sv=2021-08-06&sr=d&sp=rl&sig=unused",
            blobs=(name,),
        )
        aggregator = Aggregator(settings, matches)
        tracemalloc.start()
        try:
            count = 0
            for record in exports.records(manifest):
                aggregator.add(usage_line(record.values, record.where, "2025-12"))
                count += 1
            _, peaks[rows] = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert count == rows
        [batch] = aggregator.batches.values()
        assert batch.rows == rows and len(batch.groups) == 6  # 2 subscriptions × 3 categories
    # The large blob holds megabytes of JSON; reading it takes a fraction of one, about
    # what the small blob took.
    assert sizes[16_000] > 8 * 1024 * 1024, sizes
    assert peaks[16_000] < 1024 * 1024, peaks
    assert peaks[16_000] < peaks[2_000] * 1.5, peaks


# --- the command line --------------------------------------------------------------------------


class Commands:
    def __init__(self, microsoft: Microsoft) -> None:
        self.microsoft = microsoft
        self.path = microsoft.config.source
        microsoft.emulator.app.state["billing_retry_after"] = 0

    def cli(self) -> click.Group:
        group = copy.copy(cli)
        group.commands = dict(cli.commands)
        register_plugin_commands(group, ["--config", str(self.path)])
        return group

    def run(self, *args: str) -> Any:
        result = CliRunner().invoke(self.cli(), ["--config", str(self.path), *args])
        assert "Traceback" not in result.output, result.output
        return result


def test_billing_commands(microsoft):
    microsoft.configure('currencies = ["GBP", "EUR", "USD"]')
    commands = Commands(microsoft)
    # The commands use the config's own store: list the tenants into it first.
    own = Store.open(microsoft.config.store_url)
    try:
        SyncEngine(own, microsoft.config, PluginHost.load(microsoft.config)).run(
            module="microsoft_csp", only=["tenants"]
        )
    finally:
        own.close()

    dry = commands.run("billing", "import", "--invoice", "latest", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert (
        "(dry run: nothing written)" in dry.output
        and "would add invoice line 2025-12/G" in dry.output
    )
    none = commands.run("billing", "report")
    assert "nothing imported yet" in none.output

    imported = commands.run("billing", "import", "--invoice", "latest")
    assert imported.exit_code == 0, imported.output
    assert re.search(r"latest\s+2025-12\s+G\d{9}\s+GBP\s+imported", imported.output)
    current = commands.run("billing", "import", "--period", "current")
    assert current.exit_code == 0 and "imported" in current.output

    report = commands.run("billing", "report", "--period", "2025-12", "--format", "json")
    data = json.loads(report.output)
    world_rows = microsoft.reseller_rows("last")
    assert sum(Decimal(c["cost"]) for c in data["customers"]) == _total(world_rows)
    table = commands.run("billing", "report", "--period", "2025-12")
    assert "consumption_billing — 2025-12 (open)" in table.output and "margin" in table.output
    csv_out = commands.run("billing", "report", "--period", "2025-12", "--format", "csv")
    assert csv_out.output.startswith("row,customer,tenant_id,currency")
    periods = commands.run("billing", "periods")
    assert re.search(r"2025-12\s+open\s+EUR\s+\d+\s+billed", periods.output)

    closed = commands.run("billing", "close", "2025-12", "--note", "invoiced")
    assert "2025-12 closed" in closed.output
    again = commands.run("billing", "import", "--period", "2025-12")
    assert "closed: 2025-12" in again.output and again.exit_code == 0
    assert "closed" in commands.run("billing", "periods").output
    forced = commands.run("billing", "import", "--period", "2025-12", "--force")
    assert forced.exit_code == 0 and "unchanged" in forced.output
    reopened = commands.run("billing", "reopen", "2025-12")
    assert "reopened" in reopened.output

    for args, message in (
        (("billing", "import", "--period", "last", "--invoice", "latest"), "not both"),
        (("billing", "import", "--period", "latest"), "--period 'latest'"),
        (("billing", "import", "--invoice", "2099-01"), "has not started yet"),
        (("billing", "close", "2099-01"), "has not ended yet"),
        (("billing", "report", "--period", "soon"), "--period"),
    ):
        refused = commands.run(*args)
        assert refused.exit_code == 2 and message in refused.output, (args, refused.output)
