"""`halo-integrator demo`: the product end to end, against the emulator, in one command.

It starts the emulator, writes ``DIR/halo-integrator.toml`` pointing at it (the emulated
apps' secrets in files beside it, readable by the owner only), authorizes the Partner Center
connection through the emulator's sign-in (the same authorization-code flow a browser would
complete), prices the subscriptions from the emulator's GB price sheet (current and future),
and leaves the rest to the ordinary sync into ``DIR/halo-integrator.db``.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

from halo_integrator_core.config import Config, load_config
from halo_integrator_core.http import HttpClient

from .server import EmulatorServer
from .world import Partner

#: The redirect URI the demo's sign-in uses (one the emulated app registration has).
REDIRECT_URI = "http://localhost:8400/auth/callback"


def write_demo_config(directory: Path, server: EmulatorServer) -> Path:
    """The demo's config and secret files; returns the config's path."""
    directory.mkdir(parents=True, exist_ok=True)
    secrets = directory / "secrets"
    secrets.mkdir(mode=0o700, exist_ok=True)
    os.chmod(secrets, 0o700)
    partner: Partner = next(iter(server.world.partners.values()))
    files = {}
    for name, app in (
        ("partner-center-app", partner.partner_center_app),
        ("gdap-app", partner.gdap_app),
    ):
        path = secrets / name
        path.write_text(app.secret + "\n", encoding="utf-8")
        os.chmod(path, stat.S_IRUSR | stat.S_IWUSR)
        files[name] = path
    endpoints = "\n".join(f'{key} = "{value}"' for key, value in server.endpoints().items())
    config = directory / "halo-integrator.toml"
    config.write_text(
        f"""# Written by `halo-integrator demo`: it points at the built-in Microsoft emulator,
# which runs only while the demo does. The store (halo-integrator.db) stays for you to read.

[endpoints]
{endpoints}

[integrator]
# Every tenant the partner can reach becomes a customer of its own name, and its users
# go to that customer's main site (until [[site_mappings]] say otherwise).
create_customers_from_tenants = true
create_site_mappings_for_new_tenants = true

[modules.microsoft_csp]
enabled = true

[[modules.microsoft_csp.connections]]
name = "emulator"
tenant_id = "{partner.tenant_id}"
relationship_mode = "gdap_and_dap"
licence_import_type = "subscriptions_and_skus"
partner_center_app = {{ client_id = "{partner.partner_center_app.client_id}", client_secret = {{ file = "{files["partner-center-app"]}" }} }}
gdap_app = {{ client_id = "{partner.gdap_app.client_id}", client_secret = {{ file = "{files["gdap-app"]}" }} }}

[modules.consumption_billing]
enabled = true
# Azure usage from the partner's billing exports, read with the connection above: one
# invoice line per customer, Azure subscription and meter category, at cost plus 15%
# (storage plus 25%), at least 1.00; `halo-integrator billing report` shows a month.
group_by = ["subscription", "meter_category"]
description = "Azure usage: {{MeterCategory}}, {{SubscriptionDescription}} ({{period_name}})"
default_markup_percent = 15
minimum_line_charge = 1.00

[[modules.consumption_billing.markups]]
meter_category = "Storage"
percent = 25

[modules.subscription_pricing]
enabled = true
# Each subscription gets the cost price of the GB price sheet ([integrator] marketplace) and
# a sell price 20% above it; `halo-integrator pricing changes` lists the planned changes.
markup_percent = 20
""",
        encoding="utf-8",
    )
    return config


def authorize_through_emulator(config: Config, server: EmulatorServer) -> str:
    """Run the connection's Partner Center sign-in, playing the browser's part.

    The emulator signs in at once and redirects to the redirect URI with a code; the demo
    hands that answer to the same completion step `csp authorize` uses. Returns the
    signed-in user.
    """
    from halo_integrator_core.config import structure_module_settings
    from halo_microsoft_csp.delegated import DelegatedTokens
    from halo_microsoft_csp.settings import MicrosoftCspSettings

    settings: MicrosoftCspSettings = structure_module_settings(
        config, "microsoft_csp", MicrosoftCspSettings
    )
    [connection] = settings.connections
    with HttpClient(verify=config.endpoints.verify) as http:
        # As `csp authorize` signs in: the partner's OpenID configuration kept for the syncs.
        tokens = DelegatedTokens.keeping_discovery(
            connection, config.endpoints, http, config.directory
        )
        flow = tokens.begin(REDIRECT_URI)
        answer = http.get(flow["auth_uri"], allow_redirects=False)
        location = answer.headers.get("Location", "")
        if answer.status_code != 302 or not location.startswith(REDIRECT_URI):
            raise RuntimeError(
                f"the emulator's sign-in did not redirect back: {answer.status_code} {answer.text[:200]}"
            )
        status = tokens.complete(flow, dict(parse_qsl(urlsplit(location).query)))
    return status.username or "the partner's admin"


def prepare(directory: Path, server: EmulatorServer) -> tuple[Config, str]:
    """Write the config, load it and authorize its connection."""
    config = load_config(write_demo_config(directory, server))
    user = authorize_through_emulator(config, server)
    return config, user


def show_billing_report(config: Config) -> None:
    """Print the billing report of the newest month the demo's billing run imported."""
    import click

    from halo_integrator_core.billing import billing_report, report_periods
    from halo_integrator_core.billing.report import as_table
    from halo_integrator_core.store import Store, utcnow

    if not config.module_enabled("consumption_billing"):
        return
    store = Store.open(config.store_url)
    try:
        with store.read() as connection:
            months = sorted(report_periods(connection, "consumption_billing"))
            if months:
                report = billing_report(connection, "consumption_billing", months[-1], now=utcnow())
                click.echo("\n" + as_table(report).rstrip("\n"))
    finally:
        store.close()
