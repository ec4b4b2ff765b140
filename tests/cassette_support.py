"""Recording cassettes from the emulator, and replaying them with the network blocked.

Recording (``pytest tests/test_cassettes.py --record-mode=rewrite``) runs the cassette tests
against a freshly started emulator; on the way into a cassette every URL of the emulator is
rewritten to the Microsoft host it stands for, and every secret is scrubbed: Authorization
headers; ``client_secret``, ``client_assertion``, ``code``, ``code_verifier`` and
``refresh_token`` form fields; ``access_token``, ``refresh_token`` and ``id_token`` in token
answers; authorization codes and SAS signatures in URLs. Replaying (the default) points the
same tests at the canonical Microsoft hosts, so they match the cassettes, with the network
blocked.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import attrs

from halo_integrator_core.config import EndpointSettings
from halo_integrator_core.http import HttpClient
from halo_microsoft_csp.auth import AppTokens
from halo_microsoft_emulator import EmulatorServer, World

#: The world cassettes are recorded from (the same seed replays the same IDs).
SEED = 11
SIZE = {"customers": 5, "users": 12, "devices": 4}


@attrs.frozen
class Microsoft:
    """Where a cassette test talks to: the emulator while recording, Microsoft's hosts (the
    cassette) while replaying; the same generated world either way."""

    world: World
    endpoints: EndpointSettings
    server: EmulatorServer | None
    sleeps: list[float]

    def http(self) -> HttpClient:
        return HttpClient(verify=self.endpoints.verify, sleep=self.sleeps.append)

    def tokens(self, http: HttpClient, app: str = "gdap_app") -> AppTokens:
        registration = getattr(next(iter(self.world.partners.values())), app)
        return AppTokens(
            client_id=registration.client_id,
            secret=lambda: registration.secret,
            authority=self.endpoints.url("login"),
            http=http,
            app_name=registration.name,
        )

    @property
    def partner(self) -> str:
        return next(iter(self.world.partners))

    def consented(self) -> Any:
        return next(c for c in self.world.customers.values() if c.consented)

    def inject(self, kind: str, **options: Any) -> None:
        """A fault, while recording (the cassette then holds its answer)."""
        if self.server is not None:
            self.server.app.inject(kind, **options)


ROOT = Path(__file__).resolve().parent.parent
CASSETTES = ROOT / "cassettes"
SCRUBBED = "SCRUBBED"

#: The emulator's path prefixes → the Microsoft hosts they stand for.
CANONICAL = {
    "login": "https://login.microsoftonline.com",
    "graph": "https://graph.microsoft.com",
    "partnercenter": "https://api.partnercenter.microsoft.com",
    "partnerapi": "https://api.partner.microsoft.com",
    "blob": "https://halobillingexports.blob.core.windows.net",
}

#: Set by the ``microsoft`` fixture while recording: the emulator's URLs → Microsoft's hosts.
recording_origins: dict[str, str] = {}


def record_from(server: Any) -> None:
    """Rewrite what `server` (an `EmulatorServer`) answers to the hosts it stands for."""
    endpoints = server.endpoints()
    recording_origins.clear()
    recording_origins.update(
        {
            endpoints["login"]: CANONICAL["login"],
            endpoints["graph"]: CANONICAL["graph"],
            endpoints["partner_center"]: CANONICAL["partnercenter"],
            endpoints["partner_api"]: CANONICAL["partnerapi"],
            f"{server.base_url}/blob": CANONICAL["blob"],
            # The login origin's own name for the emulator's main origin (rare, but exact).
            f"{server.base_url}/login": CANONICAL["login"],
        }
    )


_URL_SECRETS = re.compile(
    r"(?i)([?&](?:code|sig|skoid|sktid|skt|ske|sks|skv|code_verifier)=)[^&#\s\"']+"
)
_TOKEN_FIELDS = ("access_token", "refresh_token", "id_token", "client_info")
FORM_SECRETS = ["client_secret", "client_assertion", "code", "code_verifier", "refresh_token"]


def to_canonical(text: str) -> str:
    for emulated in sorted(recording_origins, key=len, reverse=True):
        text = text.replace(emulated, recording_origins[emulated])
    return _URL_SECRETS.sub(rf"\1{SCRUBBED}", text)


def before_record_request(request: Any) -> Any:
    request.uri = to_canonical(request.uri)
    return request


def before_record_response(response: dict[str, Any]) -> dict[str, Any]:
    headers = response.get("headers", {})
    for name in list(headers):
        if name.lower() in ("location", "content-location"):
            headers[name] = [to_canonical(v) for v in headers[name]]
        if name.lower() in ("set-cookie",):
            del headers[name]
    body = response.get("body", {}).get("string")
    if isinstance(body, bytes):
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            return response  # gzip blobs: no URLs or secrets inside
        text = to_canonical(text)
        text = _scrub_token_fields(text)
        response["body"]["string"] = text.encode("utf-8")
        for name in list(headers):
            if name.lower() == "content-length":
                headers[name] = [str(len(response["body"]["string"]))]
    return response


def _scrub_token_fields(text: str) -> str:
    try:
        data = json.loads(text)
    except ValueError:
        return text
    if isinstance(data, dict) and any(field in data for field in (*_TOKEN_FIELDS, "sasToken")):
        for field in _TOKEN_FIELDS:
            if field in data:
                data[field] = SCRUBBED
        if "sasToken" in data:
            data["sasToken"] = _URL_SECRETS.sub(rf"\1{SCRUBBED}", "&" + data["sasToken"])[1:]
        return json.dumps(data)
    return text


VCR_CONFIG = {
    "filter_headers": [("authorization", SCRUBBED), ("cookie", None)],
    "filter_post_data_parameters": [(name, SCRUBBED) for name in FORM_SECRETS],
    "before_record_request": before_record_request,
    "before_record_response": before_record_response,
    "decode_compressed_response": False,
    "match_on": ["method", "scheme", "host", "port", "path", "query"],
}

#: What no cassette may hold (the secret scan).
LEAKS = (
    re.compile(r"(?i)bearer\s+(?!SCRUBBED)[A-Za-z0-9._~+/=-]{8,}"),
    re.compile(r"(?i)\"(access_token|refresh_token|id_token)\"\s*:\s*\"(?!SCRUBBED)[^\"]+\""),
    re.compile(
        r"(?i)(client_secret|client_assertion|refresh_token|code_verifier)=(?!SCRUBBED)[^&\s\"']+"
    ),
    re.compile(r"(?i)[?&](code|sig)=(?!SCRUBBED)[^&\s\"']+"),
    re.compile(r"emu\.[A-Za-z0-9_-]{20,}"),  # an emulator access token
    re.compile(r"(pc|gdap)-secret-\d+-\d+-[0-9a-f]+"),  # an emulated app's secret
    re.compile(r"https://127\.0\.0\.1:\d+"),  # the emulator's own address
)


def leaks_in(text: str) -> list[str]:
    return [match.group(0) for pattern in LEAKS for match in pattern.finditer(text)]
