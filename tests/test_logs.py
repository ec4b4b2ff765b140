"""The request logs (guide 12.1): reading them with filters, `halo-integrator logs`, pruning."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from halo_integrator_core.cli import cli
from halo_integrator_core.cli_logs import parse_since, parse_status
from halo_integrator_core.config import ValueProblem
from halo_integrator_core.export import export_fields
from halo_integrator_core.store import Store, schema
from halo_integrator_core.store import request_log as request_log_module
from halo_integrator_core.store.request_log import (
    REQUEST_FIELDS,
    prune_request_log,
    request_log_entries,
)

NOW = datetime.now(UTC).replace(microsecond=0)
CONTOSO = "11111111-1111-1111-1111-111111111111"
FABRIKAM = "22222222-2222-2222-2222-222222222222"


def entry(**values: Any) -> dict[str, Any]:
    row = {
        "direction": "outbound",
        "at": NOW,
        "module": "microsoft_csp",
        "connection": "main",
        "tenant_id": CONTOSO,
        "method": "GET",
        "url": "https://graph.microsoft.com/v1.0/users",
        "status": 200,
        "duration_ms": 12,
        "retries": 0,
        "outcome": "ok",
        "detail": None,
    }
    row.update(values)
    return row


def insert(store: Store, *rows: dict[str, Any]) -> None:
    with store.unit() as db:
        db.execute(sa.insert(schema.request_log), list(rows))


@pytest.fixture
def logged(store: Store) -> Store:
    """A log with a bit of everything, oldest first."""
    insert(
        store,
        entry(at=NOW - timedelta(days=40), url="https://old.example/1"),
        entry(at=NOW - timedelta(days=3), status=404, outcome="error", detail="Not found"),
        entry(at=NOW - timedelta(hours=5), tenant_id=FABRIKAM.upper(), status=429, retries=2),
        entry(at=NOW - timedelta(hours=1), module="consumption_billing", status=503),
        entry(at=NOW - timedelta(minutes=10), status=None, outcome="connection_error"),
        entry(
            direction="inbound",
            at=NOW - timedelta(minutes=5),
            method="POST",
            url="https://halo.example/webhooks/microsoft_csp",
            status=401,
            outcome="rejected",
            detail="bad signature",
            tenant_id=None,
        ),
        entry(
            direction="inbound",
            at=NOW - timedelta(minutes=1),
            url="http://localhost:8400/consent/callback?state=x",
            status=200,
            outcome="consent_granted",
        ),
    )
    with store.unit() as db:
        db.execute(
            sa.insert(schema.tenants).values(
                module="microsoft_csp",
                connection="main",
                tenant_id=FABRIKAM,
                name="Fabrikam Ltd",
                default_domain="fabrikam.onmicrosoft.com",
                access="gdap_only",
                created_at=NOW,
                updated_at=NOW,
                attributes={},
            )
        )
    return store


def urls(entries: list[dict[str, Any]]) -> list[str]:
    return [e["url"] for e in entries]


# -- reading ---------------------------------------------------------------------------------


def test_the_fields_are_those_of_the_requests_export():
    assert list(REQUEST_FIELDS) == export_fields("requests")


def test_entries_filter_by_direction_tenant_module_since_and_status(logged):
    outbound, total = request_log_entries(logged, direction="outbound")
    assert total == len(outbound) == 5
    assert [e["at"] for e in outbound] == sorted(e["at"] for e in outbound)  # oldest first
    assert all(e["direction"] == "outbound" for e in outbound)
    assert list(outbound[0]) == list(REQUEST_FIELDS)

    fabrikam, _ = request_log_entries(logged, tenant_ids=[FABRIKAM])
    assert [e["status"] for e in fabrikam] == [429]  # letter case ignored
    billing, _ = request_log_entries(logged, module="consumption_billing")
    assert [e["status"] for e in billing] == [503]
    recent, _ = request_log_entries(logged, direction="outbound", since=NOW - timedelta(hours=2))
    assert [e["status"] for e in recent] == [503, None]
    errors, _ = request_log_entries(logged, status=(400, 499))
    assert [e["status"] for e in errors] == [404, 429, 401]
    exact, _ = request_log_entries(logged, status=(404, 404))
    assert [e["detail"] for e in exact] == ["Not found"]

    newest, total = request_log_entries(logged, direction="outbound", limit=2)
    assert total == 5 and [e["status"] for e in newest] == [503, None]
    with pytest.raises(ValueError):
        request_log_entries(logged, direction="sideways")


def test_when_is_relative_or_iso_and_status_is_a_code_or_a_class():
    now = datetime(2025, 1, 31, 12, 0, tzinfo=UTC)
    assert parse_since("2h", now) == now - timedelta(hours=2)
    assert parse_since("30m", now) == now - timedelta(minutes=30)
    assert parse_since("3d", now) == now - timedelta(days=3)
    assert parse_since("1w", now) == now - timedelta(weeks=1)
    assert parse_since("2025-01-30", now) == datetime(2025, 1, 30, tzinfo=UTC)
    assert parse_since("2025-01-30T09:15Z", now) == datetime(2025, 1, 30, 9, 15, tzinfo=UTC)
    assert parse_since("2025-01-30T10:15+01:00", now) == datetime(2025, 1, 30, 9, 15, tzinfo=UTC)
    with pytest.raises(ValueProblem, match="not a time"):
        parse_since("yesterday", now)
    assert parse_status("404") == (404, 404)
    assert parse_status("4xx") == (400, 499)
    assert parse_status("5XX") == (500, 599)
    for bad in ("40", "abc", "6xx", "700"):
        with pytest.raises(ValueProblem, match="not an HTTP status"):
            parse_status(bad)


# -- pruning ---------------------------------------------------------------------------------


def test_prune_deletes_what_is_older_than_the_retention(store, monkeypatch):
    monkeypatch.setattr(request_log_module, "PRUNE_BATCH", 2)  # several batches
    old = [entry(at=NOW - timedelta(days=31 + i)) for i in range(5)]
    kept = [entry(at=NOW - timedelta(days=29)), entry(at=NOW)]
    insert(store, *old, *kept)
    assert prune_request_log(store, 0) == 0  # 0 keeps everything
    assert request_log_entries(store)[1] == 7
    assert prune_request_log(store, 30, now=NOW) == 5
    remaining, total = request_log_entries(store)
    assert total == 2 and {e["at"] for e in remaining} == {k["at"].isoformat() for k in kept}
    assert prune_request_log(store, 30, now=NOW) == 0
    with pytest.raises(ValueError):
        prune_request_log(store, -1)


def test_prune_forgets_webhook_event_ids_as_old_as_the_entries(store):
    events = schema.webhook_events
    with store.unit() as connection:
        for event_id, age in (("old", 31), ("older", 90), ("recent", 29), ("new", 0)):
            connection.execute(
                sa.insert(events).values(
                    module="microsoft_csp", event_id=event_id, received_at=NOW - timedelta(days=age)
                )
            )
    prune_request_log(store, 0)  # 0 keeps everything, the event IDs too
    prune_request_log(store, 30, now=NOW)
    with store.read() as connection:
        left = connection.execute(sa.select(events.c.event_id)).scalars().all()
    assert sorted(left) == ["new", "recent"]


# -- the command line ------------------------------------------------------------------------


@pytest.fixture
def run(store_url, write_config):
    path = write_config(
        f"""
[store]
url = "{store_url}"

[logging]
request_log_retention_days = 7
"""
    )

    def invoke(*args: str, exit_code: int = 0) -> Any:
        result = CliRunner().invoke(cli, ["--config", str(path), *args])
        assert "Traceback" not in result.output, result.output
        assert result.exit_code == exit_code, result.output
        return result

    return invoke


def test_logs_table_shows_each_entry_with_its_detail(logged, run):
    out = run("logs", "outbound").output
    lines = out.splitlines()
    assert lines[0].split() == [
        "TIME",
        "(UTC)",
        "MODULE",
        "TENANT",
        "METHOD",
        "STATUS",
        "MS",
        "OUTCOME",
        "URL",
    ]
    assert "https://old.example/1" in out
    assert "    Not found" in out  # the detail, under its entry
    assert "error" in out and "429" in out and "ok (2 retries)" in out
    assert "https://halo.example" not in out  # inbound
    assert lines[-1] == "5 outbound requests"

    out = run("logs", "inbound").output
    assert "bad signature" in out and "consent_granted" in out and "2 inbound requests" in out


def test_logs_json_is_one_export_record_per_line(logged, run):
    out = run("logs", "outbound", "--format", "json", "--status", "4xx").stdout
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["status"] for r in records] == [404, 429]
    assert all(list(r) == export_fields("requests") for r in records)


def test_logs_filters_from_the_command_line(logged, run):
    def statuses(*args: str) -> list[Any]:
        out = run("logs", *args, "--format", "json").stdout
        return [json.loads(line)["status"] for line in out.splitlines()]

    assert statuses("outbound", "--tenant", "Fabrikam Ltd") == [429]
    assert statuses("outbound", "--tenant", "fabrikam.onmicrosoft.com") == [429]
    assert statuses("outbound", "--tenant", CONTOSO) == [200, 404, 503, None]
    assert statuses("outbound", "--module", "consumption_billing") == [503]
    assert statuses("outbound", "--since", "2h") == [503, None]
    since = (NOW - timedelta(days=4)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert statuses("outbound", "--since", since) == [404, 429, 503, None]
    assert statuses("outbound", "--status", "503") == [503]
    assert statuses("inbound", "--status", "2xx") == [200]

    limited = run("logs", "outbound", "--limit", "2")
    assert "2 of 5 matching outbound requests" in limited.output
    assert "https://old.example/1" not in limited.output
    assert "https://old.example/1" in run("logs", "outbound", "--limit", "0").output

    assert "no outbound requests match" in run("logs", "outbound", "--status", "418").output
    assert "not an HTTP status" in run("logs", "outbound", "--status", "bad", exit_code=2).output
    assert "not a time" in run("logs", "outbound", "--since", "soon", exit_code=2).output
    assert (
        "no stored tenant named"
        in run("logs", "outbound", "--tenant", "Nobody", exit_code=2).output
    )


def test_logs_prune_uses_the_retention_unless_told(logged, run):
    out = run("logs", "prune", "--dry-run").output  # [logging] says 7 days
    assert "would delete 1 request-log entry older than 7 days" in out
    out = run("logs", "prune", "--older-than", "2", "--dry-run").output
    assert "would delete 2 request-log entries older than 2 days" in out
    assert request_log_entries(logged)[1] == 7
    assert run("logs", "prune").output.startswith("deleted 1 request-log entry older than 7 days")
    out = run("logs", "prune", "--older-than", "2").output
    assert "deleted 1 request-log entry older than 2 days" in out
    assert request_log_entries(logged)[1] == 5
    assert "nothing pruned" in run("logs", "prune", "--older-than", "0").output


def test_logs_before_any_store_say_so(tmp_path, write_config):
    path = write_config(f'[store]\nurl = "sqlite:///{tmp_path / "none.db"}"\n', name="empty.toml")
    result = CliRunner().invoke(cli, ["--config", str(path), "logs", "outbound"])
    assert result.exit_code == 0 and "nothing logged yet" in result.output
    assert not (tmp_path / "none.db").exists()
