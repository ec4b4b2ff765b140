"""The HTTP server of `halo-integrator run`: OAuth callbacks, webhooks, health, admin pages.

`make_app` builds the WSGI app (the core's routes and each enabled module's `web_routes`);
`serve` puts it on a production server (cheroot, threaded). A module's route is a plain WSGI
app; the core hands it, in the environ, the store (``halo_integrator.store``, to record
inbound requests through `record_inbound`) and, on admin routes, the admin's name
(``REMOTE_USER``) and the CSRF token its forms must post back
(``halo_integrator.csrf_token``, as the field ``csrf_token``). Pages are rendered with
`pages.page`, whose stylesheet is the only one the Content-Security-Policy allows.
"""

from __future__ import annotations

from .app import (
    CSRF_FIELD,
    ENVIRON_CSRF_TOKEN,
    ENVIRON_STORE,
    Health,
    MountedRoute,
    SignInThrottle,
    WebApp,
    make_app,
    read_body,
)
from .server import Server, ServerError, serve

__all__ = [
    "CSRF_FIELD",
    "ENVIRON_CSRF_TOKEN",
    "ENVIRON_STORE",
    "Health",
    "MountedRoute",
    "Server",
    "ServerError",
    "SignInThrottle",
    "WebApp",
    "make_app",
    "read_body",
    "serve",
]
