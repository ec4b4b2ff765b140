"""The config snippet `halo-integrator emulator` prints, pointing a config at the emulator."""

from __future__ import annotations

import ipaddress
from typing import Any


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def config_snippet(server: Any) -> str:
    """TOML for ``[endpoints]`` and one CSP connection per emulated partner, plus the
    environment variables holding the emulated apps' secrets."""
    endpoints = server.endpoints()
    lines = ["# Point halo-integrator.toml at the emulator:", "[endpoints]"]
    lines += [f'{key} = "{value}"' for key, value in endpoints.items()]
    exports = []
    for index, partner in enumerate(server.world.partners.values(), start=1):
        suffix = "" if index == 1 else f"_{index}"
        pc_var, gdap_var = f"HALO_EMULATOR_PC_SECRET{suffix}", f"HALO_EMULATOR_GDAP_SECRET{suffix}"
        lines += [
            "",
            "[[modules.microsoft_csp.connections]]",
            f'name = "emulator{suffix}"',
            f'tenant_id = "{partner.tenant_id}"',
            f'partner_center_app = {{ client_id = "{partner.partner_center_app.client_id}", '
            f'client_secret = {{ env = "{pc_var}" }} }}',
            f'gdap_app = {{ client_id = "{partner.gdap_app.client_id}", '
            f'client_secret = {{ env = "{gdap_var}" }} }}',
        ]
        exports += [
            f"export {pc_var}={partner.partner_center_app.secret}",
            f"export {gdap_var}={partner.gdap_app.secret}",
        ]
    lines += [
        "",
        "# The emulated apps' secrets (the emulator's own, not real ones):",
        *(f"# {e}" for e in exports),
    ]
    return "\n".join(lines) + "\n"
