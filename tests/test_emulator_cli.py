"""`halo-integrator emulator` as a user runs it: a process that prints its config and serves."""

from __future__ import annotations

import re
import time
import tomllib

import requests
from emulator_process import emulator_process

from halo_integrator_core.config import EndpointSettings, structure
from halo_integrator_core.http import HttpClient
from halo_microsoft_csp.auth import GRAPH_RESOURCE, AppTokens


def test_the_emulator_command_serves_and_prints_a_working_config(tmp_path):
    with emulator_process(tmp_path, "--customers", "3") as snippet:
        data = tomllib.loads(snippet)
        endpoints = structure(data["endpoints"], EndpointSettings)  # the snippet is valid config
        assert endpoints.ca_bundle == tmp_path / "emulator-ca.pem"
        [connection] = data["modules"]["microsoft_csp"]["connections"]
        secret = re.search(r"HALO_EMULATOR_GDAP_SECRET=(\S+)", snippet).group(1)
        with HttpClient(verify=endpoints.verify) as http:
            world = http.get(f"{endpoints.url('graph').rsplit('/graph', 1)[0]}/_admin/world").json()
            assert len(world["customers"]) == 3
            assert world["partners"][0]["tenant_id"] == connection["tenant_id"]
            tenant = next(c["tenant_id"] for c in world["customers"] if c["consented"])
            tokens = AppTokens(
                client_id=connection["gdap_app"]["client_id"],
                secret=lambda: secret,
                authority=endpoints.url("login"),
                http=http,
                app_name="gdap",
            )
            users = http.get(
                f"{endpoints.url('graph')}/v1.0/users",
                headers=tokens.headers(tenant, GRAPH_RESOURCE),
            ).json()
            assert users["value"] and "@odata.context" in users


def test_latency_ms_delays_every_microsoft_request_but_not_the_admin_api(tmp_path):
    with emulator_process(tmp_path, "--customers", "1", "--latency-ms", "300") as snippet:
        endpoints = structure(tomllib.loads(snippet)["endpoints"], EndpointSettings)
        graph = endpoints.url("graph")
        with requests.Session() as http:
            started = time.perf_counter()
            answer = http.get(f"{graph}/v1.0/users", verify=endpoints.verify, timeout=10)
            assert answer.status_code == 401  # no token: answered, but late
            assert time.perf_counter() - started >= 0.3
            started = time.perf_counter()
            admin = f"{graph.rsplit('/graph', 1)[0]}/_admin/world"
            assert http.get(admin, verify=endpoints.verify, timeout=10).status_code == 200
            assert time.perf_counter() - started < 0.3
