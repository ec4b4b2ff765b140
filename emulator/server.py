"""Serving the emulator over HTTPS on loopback, with a throwaway CA.

MSAL requires https authorities, so the emulator has TLS even on loopback. The CA is made
with trustme for each server; clients trust it through the CA bundle the server writes
(never through the machine's trust store: `REQUESTS_CA_BUNDLE` is ignored by passing
``verify`` with each request).
"""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path
from typing import Any

import trustme
from cheroot import wsgi
from cheroot.ssl.builtin import BuiltinSSLAdapter

from .app import Emulator
from .world import World, generate

#: Requests the login service answers at once. Entra ID answers a sync's token requests
#: side by side (a cold start asks one per tenant, up to 64 at once): four threads made the
#: emulator, not the sync, the limit with ``--latency-ms``.
LOGIN_THREADS = 16

#: Connections the listeners let wait to be accepted.
LISTEN_BACKLOG = 128


class EmulatorServer:
    """A running emulator: `start` it, read `base_url` and `ca_bundle`, `stop` it."""

    def __init__(
        self,
        world: World | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        login_port: int = 0,
        threads: int = 8,
        state_dir: Path | None = None,
    ) -> None:
        self.world = world or generate()
        self.host = host
        self._tmp = None if state_dir else tempfile.TemporaryDirectory(prefix="halo-emulator-")
        self.state_dir = Path(state_dir or self._tmp.name)  # type: ignore[union-attr]
        self.state_dir.mkdir(parents=True, exist_ok=True)
        # Receivers of Partner Center webhooks check that the signing certificate's issuer
        # is "O=Microsoft Corporation" (the webhooks page's sample): the emulator's CA says
        # so too, and its unit says what it really is.
        self.ca = trustme.CA(
            organization_name="Microsoft Corporation",
            organization_unit_name="halo-integrator emulator, not Microsoft",
        )
        leaf = self.ca.issue_cert(host, "localhost", "127.0.0.1")
        self.ca_bundle = self.state_dir / "emulator-ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_bundle))
        cert, key = self.state_dir / "emulator-cert.pem", self.state_dir / "emulator-key.pem"
        leaf.cert_chain_pems[0].write_to_path(str(cert))
        leaf.private_key_pem.write_to_path(str(key))
        self.app = Emulator(self.world)
        self.app.ca = self.ca  # signs the webhook certificate, so its chain verifies
        self._server = self._listener((host, port), self.app, threads, cert, key)
        # The login service gets an origin of its own, so its paths start with the tenant
        # as Microsoft's do (MSAL reads the tenant from there).
        self._login = self._listener(
            (host, login_port), _Prefixed(self.app, "/login"), LOGIN_THREADS, cert, key
        )
        self._threads: list[threading.Thread] = []

    @staticmethod
    def _listener(
        bind: tuple[str, int], app: Any, threads: int, cert: Path, key: Path
    ) -> wsgi.Server:
        # A listen backlog as a real service has: cheroot's default of 5 drops the SYNs of
        # a sync's burst of connections (its tenants' token requests), which then wait out
        # the kernel's one-second retransmission.
        server = wsgi.Server(
            bind, app, numthreads=threads, server_name="emulator", request_queue_size=LISTEN_BACKLOG
        )
        server.ssl_adapter = BuiltinSSLAdapter(str(cert), str(key))
        # Stop in a few milliseconds rather than half a second.
        server.expiration_interval = 0.05
        return server

    @property
    def port(self) -> int:
        return self._server.bind_addr[1]

    @property
    def base_url(self) -> str:
        return f"https://{self.host}:{self.port}"

    @property
    def login_url(self) -> str:
        return f"https://{self.host}:{self._login.bind_addr[1]}"

    def endpoints(self) -> dict[str, str]:
        """The ``[endpoints]`` settings that point a config at this emulator."""
        return {
            "login": self.login_url,
            "graph": f"{self.base_url}/graph",
            "partner_center": f"{self.base_url}/partnercenter",
            "partner_api": f"{self.base_url}/partnerapi",
            "ca_bundle": str(self.ca_bundle),
        }

    def start(self) -> EmulatorServer:
        self._server.prepare()
        self._login.prepare()
        self.app.base_url = self.base_url
        self.app.origins["login"] = self.login_url
        for name, server in (("emulator", self._server), ("emulator-login", self._login)):
            thread = threading.Thread(target=server.serve, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._server.stop()
        self._login.stop()
        for thread in self._threads:
            thread.join(timeout=10)
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> EmulatorServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


class _Prefixed:
    """WSGI middleware serving ``app`` with ``prefix`` put before every path."""

    def __init__(self, app: Any, prefix: str) -> None:
        self.app = app
        self.prefix = prefix

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        environ["PATH_INFO"] = self.prefix + environ.get("PATH_INFO", "")
        return self.app(environ, start_response)
