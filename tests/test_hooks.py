"""One test per hook of the contract (see test_docs.py, which checks that each has one)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import attrs
import pytest
import sqlalchemy as sa
from fakes import MODULE, SKU_E3, TENANT_A, FakeDirectory
from structlog.testing import capture_logs

from halo_integrator_core import (
    ModuleContext,
    ModuleSpec,
    Price,
    UsageLine,
    WebhookEvent,
    WebhookOutcome,
    hookimpl,
)
from halo_integrator_core.config import ConfigError, load_config
from halo_integrator_core.export import export_rows
from halo_integrator_core.store import schema
from halo_integrator_core.sync.engine import SyncEngine
from halo_integrator_core.webhooks import handle_webhook

CONFIG = f"""
[integrator]
create_customers_from_tenants = true
create_site_mappings_for_new_tenants = true

[modules.{MODULE}]
enabled = true

[modules.billing_probe]
enabled = true
markup_percent = 15
"""


@attrs.frozen(kw_only=True)
class ProbeSettings:
    markup_percent: int = 0


class BillingProbe:
    """A second plugin: usage, prices and webhooks, with settings of its own."""

    def __init__(self) -> None:
        self.contexts: list[ModuleContext] = []
        #: What each `run_finished` saw: called with the context, its answer recorded.
        self.finished: list[Any] = []
        self.on_finished: Any = lambda context: context.module

    @hookimpl
    def declare_modules(self) -> list[ModuleSpec]:
        return [ModuleSpec(name="billing_probe", title="Probe", settings_type=ProbeSettings)]

    @hookimpl
    def fetch_usage(self, context: ModuleContext, period: str) -> Any:
        self.contexts.append(context)
        yield UsageLine(
            tenant_id=TENANT_A,
            period=period,
            meter_category="Compute",
            quantity=Decimal("730"),
            unit="1 Hour",
            cost=Decimal("12.50"),
            currency="GBP",
        )

    @hookimpl
    def fetch_prices(self, context: ModuleContext, market: str) -> Any:
        self.contexts.append(context)
        yield Price(
            market=market,
            product_id="CFQ7TTC0LH18",
            sku_id="0001",
            term_duration="P1Y",
            billing_plan="Monthly",
            currency="GBP",
            unit_price=Decimal("9.90"),
        )

    @hookimpl
    def run_finished(self, context: ModuleContext) -> None:
        self.finished.append(self.on_finished(context))

    @hookimpl
    def on_webhook(self, context: ModuleContext, event: WebhookEvent) -> WebhookOutcome | None:
        self.contexts.append(context)
        if event.headers.get("Authorization") != "Signature good":
            return WebhookOutcome(status=401, message="signature does not verify")
        if event.body == b"boom":
            raise RuntimeError("handler crashed")
        return WebhookOutcome(
            status=200,
            message="quantity changed",
            event_name="subscription-updated",
            tenant_id=TENANT_A,
        )


@pytest.fixture
def setup(store, write_config, host_factory):
    config = load_config(write_config(CONFIG))
    world, probe = FakeDirectory.small(), BillingProbe()
    host = host_factory(config, (world, "fake"), (probe, "probe"))
    return config, host, world, probe, store


def sync(setup, **options: Any):
    config, host, _, _, store = setup
    return SyncEngine(store, config, host).run(module=MODULE, **options)


def read(store, what: str) -> list[dict[str, Any]]:
    with store.read() as connection:
        return list(export_rows(connection, what))


def test_hook_declare_modules_gives_each_module_its_typed_settings(
    setup, write_config, host_factory
):
    host = setup[1]
    modules = host.active_modules()
    assert set(modules) == {MODULE, "billing_probe"}
    assert modules["billing_probe"].settings == ProbeSettings(markup_percent=15)
    assert modules[MODULE].interval_minutes == 15  # the module's default
    bad = load_config(
        write_config(CONFIG.replace("markup_percent = 15", "markup_percnt = 15"), "bad.toml")
    )
    bad_host = host_factory(bad, (BillingProbe(), "probe2"))
    with pytest.raises(ConfigError) as caught:
        bad_host.active_modules()
    assert caught.value.problems == [
        "modules.fake_directory: no installed plugin provides this module (installed: probe2)",
        "modules.billing_probe.markup_percnt: unknown key",
    ]


def test_hook_fetch_tenants_stores_each_tenant_with_its_access(setup):
    [result] = sync(setup, only=["tenants"])
    tenants = {t["tenant_id"]: t for t in read(setup[4], "tenants")}
    assert result.counts["tenants"].added == 2
    assert tenants[TENANT_A]["access"] == "reseller_and_gdap"
    assert tenants[TENANT_A]["default_domain"] == "contoso.onmicrosoft.com"
    assert tenants[TENANT_A]["connection"] == "main"


def test_hook_fetch_licences_is_called_per_mapped_tenant_with_its_bookmark(setup):
    sync(setup)
    world = setup[2]
    assert ("fetch_licences", TENANT_A, None) in world.calls
    [e3] = [lic for lic in read(setup[4], "licences") if lic["external_id"] == SKU_E3]
    assert (e3["sku_part_number"], e3["total_units"], e3["consumed_units"]) == ("SPE_E3", 10, 2)


def test_hook_fetch_subscriptions_stores_quantity_and_term(setup):
    sync(setup)
    [sub] = read(setup[4], "subscriptions")
    assert (sub["external_id"], sub["quantity"], sub["term_duration"]) == ("sub-1", 10, "P1Y")
    assert sub["customer"] == "Contoso"


def test_hook_fetch_users_runs_after_licences_and_before_assets(setup):
    sync(setup)
    order = [hook for hook, tenant, _ in setup[2].calls if tenant == TENANT_A]
    assert order == ["fetch_licences", "fetch_subscriptions", "fetch_users", "fetch_assets"]
    assert {u["external_id"] for u in read(setup[4], "users")} == {"u-1", "u-2", "u-3", "u-9"}


def test_hook_fetch_assets_links_devices_to_users(setup):
    sync(setup)
    [asset] = read(setup[4], "assets")
    assert (asset["external_id"], asset["user"], asset["serial_number"]) == (
        "d-1",
        "adele@contoso.com",
        "PF12345",
    )


def test_hook_fetch_usage_reaches_only_the_module_that_provides_it(setup):
    config, host, *_ = setup
    context = ModuleContext(
        module="billing_probe", settings=None, integrator=config.integrator, log=None
    )
    [lines] = host.hook_for("billing_probe").fetch_usage(context=context, period="last")
    [line] = list(lines)
    assert (line.tenant_id, line.period, line.cost, line.currency) == (
        TENANT_A,
        "last",
        Decimal("12.50"),
        "GBP",
    )
    assert host.hook_for(MODULE).fetch_usage(context=context, period="last") == []


def test_hook_fetch_prices_is_called_with_the_market(setup):
    config, host, *_ = setup
    context = ModuleContext(
        module="billing_probe", settings=None, integrator=config.integrator, log=None
    )
    [rows] = host.hook_for("billing_probe").fetch_prices(
        context=context, market="GB", timeline="current"
    )
    [price] = list(rows)
    assert (price.market, price.unit_price, price.billing_plan) == (
        "GB",
        Decimal("9.90"),
        "Monthly",
    )


def test_hook_run_finished_follows_each_run_once_its_results_are_stored(setup):
    config, host, _, probe, store = setup

    def run_row(context: ModuleContext) -> tuple[str, bool, Any]:
        with store.read() as connection:
            row = connection.execute(
                sa.select(schema.sync_runs).order_by(schema.sync_runs.c.id.desc())
            ).first()
        return (context.module, context.dry_run, row.finished_at is not None)

    probe.on_finished = run_row
    sync(setup)  # the fake directory's plugin has no run_finished: only its own is called
    assert probe.finished == []
    [result] = SyncEngine(store, config, host).run(module="billing_probe")
    assert probe.finished == [("billing_probe", False, True)]
    SyncEngine(store, config, host).run(module="billing_probe", dry_run=True)
    assert probe.finished[-1][:2] == ("billing_probe", True)

    def broken(context: ModuleContext) -> None:
        raise RuntimeError("disk full")

    probe.on_finished = broken
    with capture_logs() as logs:
        [again] = SyncEngine(store, config, host).run(module="billing_probe")
    assert again.outcome == result.outcome
    assert [e["module"] for e in logs if e["event"] == "sync.run_finished_failed"] == [
        "billing_probe"
    ]


def _event(module: str, body: bytes = b"{}", signature: str = "good") -> WebhookEvent:
    return WebhookEvent(
        module=module,
        received_at=datetime.now(UTC),
        headers={"Authorization": f"Signature {signature}"},
        body=body,
    )


def test_hook_on_webhook_answers_and_logs_each_request_as_inbound(setup):
    config, host, _, probe, store = setup
    ok = handle_webhook(
        store, config, host, _event("billing_probe"), path="/webhooks/billing_probe"
    )
    assert (ok.status, ok.event_name) == (200, "subscription-updated")
    assert probe.contexts[-1].settings == ProbeSettings(markup_percent=15)
    bad = handle_webhook(
        store,
        config,
        host,
        _event("billing_probe", signature="forged"),
        path="/webhooks/billing_probe",
    )
    assert bad.status == 401
    crash = handle_webhook(
        store, config, host, _event("billing_probe", b"boom"), path="/webhooks/billing_probe"
    )
    assert crash.status == 500 and "handler crashed" in crash.message
    none = handle_webhook(store, config, host, _event(MODULE), path=f"/webhooks/{MODULE}")
    assert none.status == 404 and "does not accept webhooks" in none.message
    unknown = handle_webhook(store, config, host, _event("nope"), path="/webhooks/nope")
    assert unknown.status == 404
    with store.read() as connection:
        logged = connection.execute(
            sa.select(
                schema.request_log.c.direction,
                schema.request_log.c.status,
                schema.request_log.c.module,
            ).order_by(schema.request_log.c.id)
        ).all()
    assert logged == [
        ("inbound", 200, "billing_probe"),
        ("inbound", 401, "billing_probe"),
        ("inbound", 500, "billing_probe"),
        ("inbound", 404, MODULE),
        ("inbound", 404, "nope"),
    ]
