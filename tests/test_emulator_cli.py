"""`halo-integrator emulator` as a user runs it: a process that prints its config and serves."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import requests

from halo_integrator_core.config import EndpointSettings, structure
from halo_integrator_core.http import HttpClient
from halo_microsoft_csp.auth import GRAPH_RESOURCE, AppTokens

CLI = Path(sys.executable).parent / "halo-integrator"


def test_the_emulator_command_serves_and_prints_a_working_config(tmp_path):
    process = subprocess.Popen(
        [str(CLI), "emulator", "--port", "0", "--customers", "3", "--state-dir", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "HALO_INTEGRATOR_CONFIG"},
    )
    try:
        lines = []
        for line in process.stdout:
            lines.append(line)
            if line.startswith("# export HALO_EMULATOR_GDAP_SECRET="):
                break
        snippet = "".join(lines)
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
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0


def test_latency_ms_delays_every_microsoft_request_but_not_the_admin_api(tmp_path):
    # fmt: off
    process = subprocess.Popen(
        [str(CLI), "emulator", "--port", "0", "--customers", "1", "--latency-ms", "300",
         "--state-dir", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "HALO_INTEGRATOR_CONFIG"},
    )
    # fmt: on
    try:
        snippet = ""
        for line in process.stdout:
            snippet += line
            if line.startswith("# export HALO_EMULATOR_GDAP_SECRET="):
                break
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
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
