"""Structured logs: one format for structlog and stdlib, context on every event, redaction."""

from __future__ import annotations

import io
import json
import logging

import pytest
import structlog
from fakes import MODULE, TENANT_B, FakeDirectory
from hypothesis import given, settings
from hypothesis import strategies as st

from halo_integrator_core.config import load_config
from halo_integrator_core.logging import (
    _TEXT_MARKERS,
    _TEXT_PATTERNS,
    REDACTED,
    configure_logging,
    redact_processor,
    redact_text,
)
from halo_integrator_core.store import Store
from halo_integrator_core.sync.engine import Problem, RunResult, SyncEngine


@pytest.fixture
def log_stream():
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    stream = io.StringIO()
    configure_logging(format="json", level="info", stream=stream)
    try:
        yield stream
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
        structlog.reset_defaults()


def events(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_the_redaction_processor_removes_secrets_wherever_they_are():
    event = {
        "event": "token.request failed: client_secret=abc123def456&grant_type=client_credentials",
        "client_secret": "abc123def456",
        "headers": {
            "Authorization": "Bearer eyJ0eXAiOiJKV1QiLCJhbGciOi.eyJhdWQiOiJodHRwczovL2dy.sig",
            "Accept": "json",
        },
        "url": "https://login.example/cb?code=0.AQsAabc&state=xyz",
        "blob": "https://store.blob.core.windows.net/x/part-1.json.gz?sv=2021&sig=AbC%2Bd&se=2026",
        "body": '{"access_token": "eyJ0eXAiOiJKV1QiLCJhbGciOi.eyJhdWQiOiJodHRwczovL2dy.sig", "expires_in": 3599}',
        "items": [{"refresh_token": "0.AQsAxyz"}, "Authorization: Basic dXNlcjpwYXNzd29yZA=="],
        "code": 800090,  # a Partner Center error code, not a secret
        "tenant": "aaaaaaaa-0000-4000-8000-000000000001",
    }
    out = redact_processor(None, "info", dict(event))
    text = json.dumps(out)
    for secret in (
        "abc123def456",
        "eyJ0eXAi",
        "0.AQsAabc",
        "AbC%2Bd",
        "0.AQsAxyz",
        "dXNlcjpwYXNzd29yZA",
    ):
        assert secret not in text, secret
    assert out["client_secret"] == REDACTED
    assert out["headers"] == {"Authorization": REDACTED, "Accept": "json"}
    assert out["url"] == f"https://login.example/cb?code={REDACTED}&state=xyz"
    assert out["code"] == 800090
    assert out["tenant"] == event["tenant"]
    assert json.loads(out["body"])["expires_in"] == 3599


def _every_pattern(text: str) -> str:
    for pattern, replacement in _TEXT_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def _any_case(word: str) -> st.SearchStrategy[str]:
    return st.lists(st.booleans(), min_size=len(word), max_size=len(word)).map(
        lambda upper: "".join(c.upper() if u else c for c, u in zip(word, upper, strict=True))
    )


# Texts built from what the patterns look for: the words in any case, with what comes before
# and after them, among words spelled with letters a case-blind regex takes for ASCII ones
# (the Kelvin sign for "k", the long s, the dotted capital I).
_PIECES = st.one_of(
    st.tuples(
        st.sampled_from(["", " ", "?", "&", "Bearer ", "client_", "access_", "id_", "sas"]),
        st.sampled_from(_TEXT_MARKERS).flatmap(_any_case),
        st.sampled_from(["", " ", "=", ": ", '="', ".", "hbGciOiJIUzI1NiJ9."]),
        st.sampled_from(["abcdefgh12", "eyJzdWIiOiIxIn0.x", "", "&next=1"]),
    ).map("".join),
    st.sampled_from(
        ["to\u212aen=abcdefgh12", "\u017fecret: x", "ba\u017fic abcdefgh12", "?s\u212aoid=1"]
    ),
    st.text(max_size=3),
)


@settings(max_examples=300)
@given(st.lists(_PIECES, max_size=6).map("".join))
def test_redacting_text_skips_the_patterns_only_where_none_could_match(text):
    assert redact_text(text) == _every_pattern(text)


#: For each word of `_TEXT_MARKERS`, a text that holds a secret and no other of the words.
_ONE_MARKER_EACH = {
    "bearer": "Authorization: Bearer abcdefgh12",
    "signature": "Authorization: Signature abcdefgh12",
    "basic": "Authorization: basic abcdefgh12",
    "secret": "client_secret=abcdefgh12&x=1",
    "assertion": "client_assertion=abcdefgh12",
    "token": "refresh_token: abcdefgh12",
    "password": "password=abcdefgh12",
    "code=": "https://x.example/cb?code=0.AQsAabc&state=1",
    "sig=": "https://x.blob.example/f?sv=1&sig=SASSIGNED",
    "skoid=": "https://x.blob.example/f?skoid=0a1b2c3d",
    "sktid=": "https://x.blob.example/f?sktid=0a1b2c3d",
    "eyj": "jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.x",
}


@pytest.mark.parametrize("marker", sorted(_ONE_MARKER_EACH))
def test_each_word_the_patterns_need_lets_its_secret_be_redacted(marker):
    text = _ONE_MARKER_EACH[marker]
    assert [m for m in _TEXT_MARKERS if m in text.lower() and m != marker] == []
    assert REDACTED in redact_text(text)
    assert redact_text(text) == _every_pattern(text)


@pytest.mark.parametrize(
    "text", ["access_to\u212aen=abcdefgh12", "\u212aeep client_\u017fecret=abcdefgh12"]
)
def test_text_that_is_not_ascii_takes_every_pattern(text):
    assert REDACTED in redact_text(text)


def test_stdlib_and_structlog_events_share_one_redacted_json_format(log_stream):
    logging.getLogger("msal.application").warning(
        "POST https://login.microsoftonline.com/t/oauth2/v2.0/token client_secret=s3cr3tvalue"
    )
    structlog.get_logger("halo").info(
        "token.acquired", access_token="eyJabc.def.ghi", scope="graph"
    )
    [stdlib, ours] = events(log_stream)
    assert stdlib["logger"] == "msal.application" and stdlib["level"] == "warning"
    assert "s3cr3tvalue" not in stdlib["event"]
    assert ours["access_token"] == REDACTED and ours["scope"] == "graph"
    assert {"timestamp", "level", "event"} <= stdlib.keys() & ours.keys()


def test_every_event_of_a_sync_carries_module_connection_and_tenant(
    log_stream, tmp_path, write_config, host_factory
):
    config = load_config(
        write_config(
            f"[integrator]\ncreate_customers_from_tenants = true\ncreate_site_mappings_for_new_tenants = true\n[modules.{MODULE}]\nenabled = true\n"
        )
    )
    world = FakeDirectory.small()
    store = Store.open(f"sqlite:///{tmp_path / 'db.sqlite'}")
    try:
        SyncEngine(store, config, host_factory(config, (world, "fake"))).run()
    finally:
        store.close()
    entity_events = [e for e in events(log_stream) if e["event"] == "sync.entities"]
    assert len(entity_events) == 2 * 4
    for event in entity_events:
        assert event["module"] == MODULE
        assert event["connection"] == "main"
        assert event["tenant"] in world.tenants
        assert isinstance(event["run_id"], int)
    [summary] = [e for e in events(log_stream) if e["event"] == "sync.finished"]
    assert summary["module"] == MODULE and summary["users"]["added"] == 4
    assert "tenant" not in summary  # the tenant context ends with the tenant
    assert TENANT_B in {e["tenant"] for e in entity_events}


def test_an_unknown_level_is_refused():
    with pytest.raises(ValueError, match="unknown log level 'loud'"):
        configure_logging(format="json", level="loud", stream=io.StringIO())


@pytest.mark.parametrize("level", ["info", "debug"])
def test_a_record_a_rule_leaves_out_is_one_line_only_in_debug(tmp_path, level):
    stream = io.StringIO()
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    configure_logging(format="json", level=level, stream=stream)
    try:
        result = RunResult(module=MODULE, run_id=1, dry_run=False)
        result.add_problem(Problem("users", TENANT_B, "u-9", "skipped", "a guest: not imported"))
        result.add_problem(Problem("users", TENANT_B, None, "warning", "a mapping is broken"))
    finally:
        root.handlers[:], root_level = saved
        root.setLevel(root_level)
        structlog.reset_defaults()
    logged = [(e["event"], e.get("entity_id")) for e in events(stream)]
    skipped = [("sync.record_skipped", "u-9")] if level == "debug" else []
    assert logged == [*skipped, ("sync.record_warning", None)]
    assert result.problem_total == 2 and len(result.problems) == 2  # kept either way
