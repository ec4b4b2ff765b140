"""The client's pacing under Graph's throttling: a sliding window per tenant, Retry-After held
for a whole tenant, and the HttpClient asking the pacer before each attempt."""

from __future__ import annotations

import threading

import pytest
import requests
import structlog

from halo_integrator_core import errors
from halo_integrator_core.config import ConfigError, load_config
from halo_integrator_core.http import HttpClient, RetryPolicy
from halo_integrator_core.pacing import PaceKey, Pacer
from halo_integrator_core.store.request_log import RunClients

GRAPH = "https://graph.example/graph"
USERS = f"{GRAPH}/v1.0/users"
TENANT = "0a1b2c3d-0000-4000-8000-000000000001"
OTHER_TENANT = "0a1b2c3d-0000-4000-8000-000000000002"


class FakeTime:
    """A clock that moves only when slept on; every wait is recorded."""

    def __init__(self, now: float = 100.0) -> None:
        self.now = now
        self.waits: list[float] = []
        self._lock = threading.Lock()

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.waits.append(seconds)
            self.now += seconds


def paced(time: FakeTime, *, requests: int = 0, window: float = 10.0) -> Pacer:
    return Pacer([GRAPH], requests=requests, window_seconds=window, clock=time.clock)


def turn(pacer: Pacer, time: FakeTime, url: str = USERS, tenant: str | None = TENANT):
    with structlog.contextvars.bound_contextvars(tenant=tenant):
        return pacer.wait_turn(url, sleep=time.sleep)


# -- which requests are paced -----------------------------------------------------------------


def test_only_urls_under_a_budgeted_base_are_paced_and_keyed_by_the_bound_tenant():
    pacer = Pacer(["https://127.0.0.1:8443/graph/"])
    with structlog.contextvars.bound_contextvars(tenant=TENANT.upper()):
        assert pacer.key_for("https://127.0.0.1:8443/graph/v1.0/users?$top=5") == PaceKey(
            "https://127.0.0.1:8443/graph", TENANT
        )
        assert pacer.key_for("HTTPS://127.0.0.1:8443/Graph/v1.0/users") is not None
        # The emulator serves every API on one host: the path prefix tells them apart.
        assert pacer.key_for("https://127.0.0.1:8443/partnercenter/v1/customers") is None
        assert pacer.key_for("https://127.0.0.1:8443/graphical") is None
        assert pacer.key_for("https://127.0.0.1:8444/login/x/oauth2/v2.0/token") is None
    assert pacer.key_for("https://127.0.0.1:8443/graph/v1.0/me") == PaceKey(
        "https://127.0.0.1:8443/graph", None
    )


def test_a_url_that_is_not_paced_gets_no_turn_and_never_waits():
    time = FakeTime()
    pacer = paced(time, requests=1)
    for _ in range(5):
        assert turn(pacer, time, "https://api.partnercenter.example/v1/customers") is None
    assert time.waits == []


# -- the budget: a sliding window per key -----------------------------------------------------


def test_the_window_slides_and_a_request_waits_exactly_until_it_fits():
    time = FakeTime(now=0.0)
    pacer = paced(time, requests=3, window=10.0)
    for answered_at in (0.0, 1.0, 2.0):
        time.now = answered_at
        pacer.finish(turn(pacer, time), status=200)
    assert time.waits == []
    fourth = turn(pacer, time)  # at 2: the answer of 0 leaves the window at 10
    assert time.waits == [8.0] and fourth.waited == 8.0 and time.now == 10.0
    pacer.finish(fourth, status=200)
    fifth = turn(pacer, time)  # at 10: 1, 2 and 10 are inside; 1 leaves at 11
    assert time.waits == [8.0, 1.0]
    pacer.finish(fifth, status=200)


def test_requests_in_flight_hold_their_place_until_answered_and_a_window_more():
    time = FakeTime(now=0.0)
    pacer = paced(time, requests=2, window=10.0)
    first, second = turn(pacer, time), turn(pacer, time)

    def sleep(seconds: float) -> None:
        if not time.waits:  # the first answer arrives 3 s into the first wait
            time.now = 3.0
            pacer.finish(first, status=200)
            time.now = 0.0
        time.sleep(seconds)

    with structlog.contextvars.bound_contextvars(tenant=TENANT):
        third = pacer.wait_turn(USERS, sleep=sleep)
    # A whole window at first (no answer yet), then until the answer of 3 leaves at 13.
    assert time.waits == [10.0, 3.0] and third.waited == 13.0
    pacer.finish(second, status=200)
    pacer.finish(third, status=200)


def test_each_tenant_has_a_budget_of_its_own():
    time = FakeTime()
    pacer = paced(time, requests=1)
    pacer.finish(turn(pacer, time, tenant=TENANT), status=200)
    pacer.finish(turn(pacer, time, tenant=OTHER_TENANT), status=200)
    assert time.waits == []
    pacer.finish(turn(pacer, time, tenant=TENANT), status=200)
    assert time.waits == [10.0]


def test_without_a_budget_nothing_waits_but_a_retry_after():
    time = FakeTime()
    pacer = paced(time)
    turns = [turn(pacer, time) for _ in range(50)]
    for each in turns:
        assert pacer.finish(each, status=200) is False
    assert time.waits == []


# -- Retry-After holds the whole key ----------------------------------------------------------


def test_a_retry_after_holds_other_threads_of_the_tenant_and_no_other_tenant():
    time = FakeTime()
    pacer = paced(time)
    throttled = turn(pacer, time)
    assert pacer.finish(throttled, status=429, retry_after=5.0) is True

    waited: dict[str, float] = {}

    def request(name: str, tenant: str | None) -> None:
        got = turn(pacer, time, tenant=tenant)
        waited[name] = got.waited
        pacer.finish(got, status=200)

    threads = [
        threading.Thread(target=request, args=("same tenant", TENANT)),
        threading.Thread(target=request, args=("other tenant", OTHER_TENANT)),
        threading.Thread(target=request, args=("no tenant", None)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=5)
    assert waited == {"same tenant": 5.0, "other tenant": 0.0, "no tenant": 0.0}


def test_the_hold_is_real_time_for_threads_already_waiting():
    # Real clock and sleep: two threads of the tenant are let go only after the hold.
    import time as real_time

    pacer = Pacer([GRAPH])
    with structlog.contextvars.bound_contextvars(tenant=TENANT):
        pacer.finish(pacer.wait_turn(USERS), status=503, retry_after=0.3)
    started = real_time.monotonic()
    gone: list[float] = []

    def request() -> None:
        with structlog.contextvars.bound_contextvars(tenant=TENANT):
            pacer.finish(pacer.wait_turn(USERS), status=200)
        gone.append(real_time.monotonic() - started)

    threads = [threading.Thread(target=request) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=5)
    assert len(gone) == 2 and min(gone) >= 0.29


def test_only_throttling_answers_hold_and_a_later_hold_extends_an_earlier_one():
    time = FakeTime()
    pacer = paced(time)
    assert pacer.finish(turn(pacer, time), status=500, retry_after=30.0) is False
    assert pacer.finish(turn(pacer, time), status=429) is False  # no Retry-After: backoff
    assert time.waits == []
    first, second = turn(pacer, time), turn(pacer, time)
    pacer.finish(first, status=429, retry_after=2.0)
    pacer.finish(second, status=429, retry_after=1.0)  # does not shorten the first hold
    turn(pacer, time)
    assert time.waits == [2.0]


def test_the_budget_and_a_hold_together_wait_for_the_later_of_the_two():
    time = FakeTime(now=0.0)
    pacer = paced(time, requests=1, window=10.0)
    pacer.finish(turn(pacer, time), status=429, retry_after=4.0)
    turn(pacer, time)
    assert time.waits == [10.0]


def test_a_pacer_refuses_a_budget_it_cannot_keep():
    with pytest.raises(ValueError, match="requests"):
        Pacer([GRAPH], requests=-1)
    with pytest.raises(ValueError, match="window_seconds"):
        Pacer([GRAPH], requests=10, window_seconds=0)


# -- the HttpClient asks the pacer ------------------------------------------------------------


def graph_token(emulator, tenant: str) -> dict[str, str]:
    from halo_microsoft_emulator.app import GRAPH as GRAPH_RESOURCE

    partner = next(iter(emulator.world.partners.values()))
    token = emulator.app.tokens.issue(
        client_id=partner.gdap_app.client_id,
        tenant=tenant,
        resource=GRAPH_RESOURCE,
        scopes=("https://graph.microsoft.com/.default",),
        roles=tuple(partner.gdap_app.permissions),
    )
    return {"Authorization": f"Bearer {token.value}"}


def test_the_client_leaves_a_retry_after_wait_to_the_pacer_and_waits_it_once(emulator):
    graph = emulator.endpoints()["graph"]
    tenant = next(iter(emulator.world.customers))
    emulator.app.inject("throttle", endpoint="graph.organization", times=1, retry_after=2)
    time = FakeTime()
    pacer = Pacer([graph], clock=time.clock)
    with (
        HttpClient(verify=str(emulator.ca_bundle), sleep=time.sleep, pacer=pacer) as http,
        structlog.contextvars.bound_contextvars(tenant=tenant),
    ):
        answer = http.get(f"{graph}/v1.0/organization", headers=graph_token(emulator, tenant))
        assert answer.status_code == 200
        assert time.waits == [2.0]  # the retry's turn waited; the client did not wait again
        # ... and the hold covers the tenant's other requests sent before it is over.
        time.now -= 1.0
        assert pacer.wait_turn(f"{graph}/v1.0/users", sleep=time.sleep).waited == 1.0


def test_an_unpaced_url_is_retried_after_the_clients_own_wait(emulator):
    graph = emulator.endpoints()["graph"]
    partner_center = emulator.endpoints()["partner_center"]
    emulator.app.inject("throttle", endpoint="partner_center.*", times=1, retry_after=3)
    time = FakeTime()
    pacer = Pacer([graph], clock=time.clock)
    with HttpClient(verify=str(emulator.ca_bundle), sleep=time.sleep, pacer=pacer) as http:
        answer = http.get(f"{partner_center}/v1/customers", raise_for_status=False)
    assert answer.status_code == 401  # no token; what matters is the wait before it
    assert time.waits == [3.0]


def test_a_failed_connection_gives_its_turn_back():
    time = FakeTime()
    closed = "http://127.0.0.1:9"  # the discard port: nothing listens on loopback
    pacer = Pacer([closed], requests=1, window_seconds=10.0, clock=time.clock)
    retry = RetryPolicy(max_attempts=2, backoff_base=0.001)
    with (
        HttpClient(sleep=time.sleep, pacer=pacer, retry=retry, timeout=(1, 1)) as http,
        structlog.contextvars.bound_contextvars(tenant=TENANT),
    ):
        with pytest.raises(errors.ConnectionFailed):
            http.get(f"{closed}/v1.0/users")
        time.now += 10.0  # past the window of the last attempt

        def must_not_wait(seconds: float) -> None:
            raise AssertionError(f"waited {seconds} s: a turn was never given back")

        assert pacer.wait_turn(f"{closed}/v1.0/users", sleep=must_not_wait).waited == 0.0


# -- configuration -----------------------------------------------------------------------------


def test_throttling_settings_build_the_pacer_of_a_runs_clients(write_config, store):
    config = load_config(
        write_config(
            '[endpoints]\ngraph = "https://127.0.0.1:8443/graph"\n\n'
            "[throttling]\ngraph_requests = 2000\ngraph_window_seconds = 20\n"
        )
    )
    clients = RunClients.for_config(store, config)
    http, dry = clients.get(dry_run=False), clients.get(dry_run=True)
    try:
        assert http.pacer is dry.pacer is clients.pacer  # one account of one budget
        assert clients.pacer.endpoints == ("https://127.0.0.1:8443/graph",)
        assert (clients.pacer.requests, clients.pacer.window_seconds) == (2000, 20.0)
    finally:
        http.close()
        dry.close()


def test_by_default_the_pacer_only_honours_retry_after_on_the_public_graph(write_config):
    config = load_config(write_config(""))
    pacer = Pacer.from_config(config)
    assert pacer.endpoints == ("https://graph.microsoft.com",)
    assert pacer.requests == 0


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (
            "graph_requests = -5",
            "throttling.graph_requests: -5 is negative: give 0 (pace by Retry-After only)",
        ),
        (
            "graph_requests = 100\ngraph_window_seconds = 0",
            "throttling.graph_window_seconds: 0.0 is not a number of seconds above 0",
        ),
        ('graph_requests = "many"', "throttling.graph_requests: expected an integer"),
        ("graph_request = 10", "throttling.graph_request: unknown key"),
    ],
)
def test_bad_throttling_settings_name_their_key_and_the_fix(write_config, text, problem):
    with pytest.raises(ConfigError) as caught:
        load_config(write_config(f"[throttling]\n{text}\n"))
    assert any(line.startswith(problem) for line in caught.value.problems), caught.value.problems


def test_the_pacer_never_touches_a_request_it_does_not_pace(monkeypatch):
    # A client with a pacer sends exactly what one without sends, for unpaced URLs.
    sent: list[str] = []

    def fake_request(self, method, url, **kwargs):
        sent.append(url)
        response = requests.Response()
        response.status_code = 200
        response._content = b"{}"
        return response

    monkeypatch.setattr(requests.Session, "request", fake_request)
    time = FakeTime()
    with HttpClient(sleep=time.sleep, pacer=paced(time, requests=1)) as http:
        for _ in range(3):
            http.get("https://login.example/token")
    assert sent == ["https://login.example/token"] * 3 and time.waits == []
