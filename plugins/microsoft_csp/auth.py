"""App-only tokens (client credentials) through MSAL and the shared HTTP client.

One MSAL confidential client per (app, tenant), built lazily: MSAL discovers the tenant's
endpoints in its constructor, and keeps tokens in its cache until shortly before they
expire. A lock per (app, tenant, resource) keeps two threads from fetching the same token
at once. A refusal becomes a typed error naming the tenant and the app (`errors`).

Between runs (when there is a state folder, the config file's), two kinds of file under
``tokens/`` spare each run a token request and an endpoint discovery per tenant:

- ``tokens/<connection>.<app>.app.json`` (``<app>`` is ``gdap`` or ``partner_center``):
  the app's MSAL token cache with the login endpoint it came from. It holds its access
  tokens, one per tenant and resource, each good for about an hour (client credentials
  get no refresh tokens); `AppTokenCache`.
- ``tokens/<connection>.http-cache``: MSAL's ``http_cache`` of the connection's two apps,
  of which only the tenants' OpenID configurations (public endpoint metadata, no tokens)
  are kept, for MSAL's 24 hours; `HttpCache`.

Access tokens are secrets: like the Partner Center authorization beside them (`delegated`),
both files are readable by their owner only (mode 0600 in a 0700 folder, on POSIX),
written atomically, only when they changed, one write at a time and at most one every
`SAVE_INTERVAL` seconds: a cold start of 500 tenants gets 500 tokens in a few seconds, and
each write is of the whole file. What waits is written when the interval ends, when the
run ends (`flush_all`, from the module's ``run_finished`` hook) and when the process
exits; a process killed meanwhile loses only tokens, which the next run asks for. Two
processes (the daemon and a sync by hand) may share them: the last writer wins. A file that cannot be read or
makes no sense is left aside with a warning and the tokens are asked for again. A token an
API refuses is dropped (`forget_refused`), so the next call or run asks for a new one.
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import io
import json
import os
import pickle
import re
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from pathlib import Path
from typing import Any

import msal
import structlog

from halo_integrator_core.http import HttpClient, MsalHttpClient

from .errors import token_error

log = structlog.get_logger(__name__)

GRAPH_RESOURCE = "https://graph.microsoft.com"
PARTNER_CENTER_RESOURCE = "https://api.partnercenter.microsoft.com"
PARTNER_API_RESOURCE = "https://api.partner.microsoft.com"

#: The folder under the state folder that holds token caches (shared with `delegated`).
TOKENS_FOLDER = "tokens"
#: How long MSAL keeps a tenant's OpenID configuration in its ``http_cache`` (its own
#: figure), and so how long an unused tenant's entries are worth keeping in the file.
HTTP_CACHE_LIFETIME = 24 * 3600

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def _safe(name: str) -> str:
    return _UNSAFE.sub("_", name) or "_"


def app_cache_file(state_dir: Path, connection_name: str, app: str) -> Path:
    """Where the token cache of app ``app`` (``gdap``, ``partner_center``) is kept."""
    return Path(state_dir) / TOKENS_FOLDER / f"{_safe(connection_name)}.{_safe(app)}.app.json"


def http_cache_file(state_dir: Path, connection_name: str) -> Path:
    """Where the MSAL ``http_cache`` of connection ``connection_name`` is kept."""
    return Path(state_dir) / TOKENS_FOLDER / f"{_safe(connection_name)}.http-cache"


#: Seconds between two writes of one token file; what changes in between waits (`_PrivateFile`).
SAVE_INTERVAL = 2.0

#: Every token file alive, for `flush_all`.
_files: weakref.WeakSet[_PrivateFile] = weakref.WeakSet()
_files_lock = threading.Lock()


def flush_all() -> None:
    """Write every token file's waiting changes now: at the end of a run, and at exit."""
    with _files_lock:
        files = list(_files)
    for file in files:
        file.flush()


atexit.register(flush_all)


def write_private(path: Path, data: bytes, *, durable: bool) -> None:
    """Replace ``path`` with ``data`` atomically, readable by its owner only (0600 in a
    0700 folder): the token files under ``tokens/``. ``durable`` syncs it to disk first,
    for what a crash must not lose (the Partner Center authorization)."""
    folder = path.parent
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    if folder.stat().st_mode & 0o077:
        os.chmod(folder, 0o700)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o600)  # mkstemp makes it 0600 already; say so for other platforms
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class _PrivateFile:
    """A file only its owner may read, rewritten whole from the state in memory.

    `save` is called from many threads, after each change. The first change is written at
    once; changes within `SAVE_INTERVAL` of a write wait for its end, when a timer writes
    them all in one go (the threads return at once). `flush` writes what waits now. A write
    goes to a temporary file renamed over the old one, so a reader never sees half a file.
    """

    def __init__(self, path: Path, what: str) -> None:
        self.path = Path(path)
        self._what = what
        self._state = threading.Lock()  # guards the schedule below
        self._io = threading.Lock()  # one write at a time
        self._next_write = 0.0  # monotonic: no write before this, but by a flush
        self._timer: threading.Timer | None = None
        self._write_failed = False
        with _files_lock:
            _files.add(self)

    def _changed(self) -> bool:
        raise NotImplementedError

    def _dump(self) -> bytes:
        """The state to write; from here on it counts as written."""
        raise NotImplementedError

    def save(self) -> None:
        """Write the state if it changed: now, or at the end of the interval (see the class
        docstring)."""
        with self._state:
            if self._timer is not None:
                return  # the timer writes this change too
            now = time.monotonic()
            if now < self._next_write:
                self._timer = threading.Timer(self._next_write - now, self._timed)
                self._timer.daemon = True
                self._timer.start()
                return
            self._next_write = now + SAVE_INTERVAL
        self._write_changes()

    def flush(self) -> None:
        """Write what waits for the interval's end, now."""
        with self._state:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._next_write = time.monotonic() + SAVE_INTERVAL
        self._write_changes()

    def _timed(self) -> None:
        with self._state:
            if self._timer is None:
                return  # flushed meanwhile
            self._timer = None
            self._next_write = time.monotonic() + SAVE_INTERVAL
        self._write_changes()

    def _write_changes(self) -> None:
        with self._io:
            if self._changed():
                self._write(self._dump())

    def _write(self, data: bytes) -> None:
        try:
            # Not durable: a file lost in a crash costs a token request, not a secret.
            write_private(self.path, data, durable=False)
        except OSError as exc:
            # A cache that cannot be written is a cache in memory only, not a failed sync.
            if not self._write_failed:
                log.warning(f"csp.{self._what}_not_written", path=str(self.path), reason=str(exc))
            self._write_failed = True

    def _read(self) -> bytes | None:
        """The file's bytes; ``None`` when there is none or it cannot be read (warned)."""
        try:
            if self.path.stat().st_mode & 0o077:
                log.warning("csp.token_cache_permissions_fixed", path=str(self.path))
                os.chmod(self.path, 0o600)
            return self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            self._unusable(exc)
            return None

    def _unusable(self, reason: object) -> None:
        log.warning(
            f"csp.{self._what}_unusable",
            path=str(self.path),
            reason=str(reason) or type(reason).__name__,
            effect="left aside: its contents are fetched again and the file rewritten",
        )


class AppTokenCache(_PrivateFile):
    """The MSAL token cache of one app of a connection, kept in a file between runs.

    ``cache`` is handed to every MSAL client of the app, one per tenant: MSAL's own cache
    keys (client id, login host, tenant, scopes) keep one tenant's token from being served
    for another, and it skips tokens that expire within five minutes. The file records the
    login endpoint (with its port) the tokens came from; tokens of another endpoint (an
    emulator started again on other ports, another cloud) are not used.

    A token outlives a change of the app's client secret: it stays valid, and is used,
    until it expires (an hour at most), as Entra ID itself allows.
    """

    def __init__(self, path: Path, *, login: str) -> None:
        super().__init__(path, "app_token_cache")
        self.login = login.rstrip("/")
        self.cache = msal.SerializableTokenCache()
        self._load()

    def _load(self) -> None:
        data = self._read()
        if data is None:
            return
        try:
            document = json.loads(data.decode("utf-8"))
            state = document["msal"]
            if not _usable_msal_state(state):
                raise ValueError("not an MSAL token cache")
        except (ValueError, KeyError, TypeError) as exc:
            self._unusable(exc)
            return
        if document.get("login") != self.login:
            log.info(
                "csp.app_token_cache_of_another_login",
                path=str(self.path),
                login=document.get("login"),
                now=self.login,
            )
            return
        self.cache.deserialize(json.dumps(state))

    def _changed(self) -> bool:
        return self.cache.has_state_changed

    def _dump(self) -> bytes:
        # serialize() marks the cache unchanged; MSAL's own JSON goes in as it is.
        return (
            f'{{"login": {json.dumps(self.login)},\n"msal": {self.cache.serialize()}}}\n'
        ).encode()


def _usable_msal_state(state: object) -> bool:
    """Whether ``state`` has the shape MSAL reads without failing (a dict of dicts of dicts,
    access tokens with a secret and a numeric expiry)."""
    if not isinstance(state, dict):
        return False
    for entries in state.values():
        if not isinstance(entries, dict) or not all(isinstance(e, dict) for e in entries.values()):
            return False
    return all(
        isinstance(token.get("secret"), str) and str(token.get("expires_on", "")).isdigit()
        for token in state.get("AccessToken", {}).values()
    )


class _Unpickler(pickle.Unpickler):
    """Reads back MSAL's cached HTTP answers and nothing else (no code from a file)."""

    ALLOWED = frozenset({("msal.throttled_http_client", "NormalizedResponse")})

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} has no place in an HTTP cache")


class HttpCache(_PrivateFile):
    """MSAL's ``http_cache`` of one connection, kept in a file between runs.

    MSAL caches some HTTP answers of its own: the tenant's OpenID configuration its
    constructor fetches (24 hours), and for a short while token refusals and throttling
    answers. Only the first kind is written to the file, as MSAL's docs suggest for a
    command line; refusals stay in the process, so a fixed consent or secret is seen by the
    next run at once. Each MSAL client gets a `partition` of its own, since MSAL keeps an
    index in the mapping that two clients must not update at once.
    """

    def __init__(self, path: Path) -> None:
        super().__init__(path, "http_cache")
        self._lock = threading.RLock()
        self._partitions: dict[str, dict[str, Any]] = {}
        self._used: dict[str, float] = {}
        self._dirty = False
        self._load()

    def partition(self, name: str) -> MutableMapping[str, Any]:
        """The mapping to hand one MSAL client as its ``http_cache``."""
        with self._lock:
            self._used[name] = time.time()
            return _Partition(self, self._partitions.setdefault(name, {}))

    def _load(self) -> None:
        data = self._read()
        if data is None:
            return
        try:
            document = _Unpickler(io.BytesIO(data)).load()
            partitions = document["partitions"]
            used = document["used"]
            if not (
                isinstance(partitions, dict)
                and isinstance(used, dict)
                and all(isinstance(p, dict) for p in partitions.values())
                and all(isinstance(t, int | float) for t in used.values())
            ):
                raise ValueError("not an HTTP cache")
        # Whatever a damaged or foreign pickle raises: MSAL's docs list these, and more.
        except Exception as exc:
            self._unusable(exc)
            return
        self._partitions = partitions
        self._used = {name: used.get(name, 0.0) for name in partitions}

    @staticmethod
    def _kept(key: str) -> bool:
        # MSAL's keys start with the method: "GET <url> ..." (discovery, kept) and
        # "POST <url> ..." (a refusal or throttling answer of the token endpoint, not kept).
        return not key.startswith("POST ")

    def _changed(self) -> bool:
        return self._dirty

    def _dump(self) -> bytes:
        with self._lock:
            self._dirty = False
            stale = time.time() - HTTP_CACHE_LIFETIME
            partitions = {
                name: kept
                for name, entries in self._partitions.items()
                if self._used.get(name, 0.0) > stale
                and (kept := {k: v for k, v in entries.items() if self._kept(k)})
            }
            used = {name: self._used[name] for name in partitions}
            # The values are not changed in place once stored (see `_Partition`).
            return pickle.dumps({"partitions": partitions, "used": used})


class _Partition(MutableMapping[str, Any]):
    """One MSAL client's share of an `HttpCache`.

    Reads hand out copies: MSAL changes what it read (its index) before storing it again,
    and the file may be written meanwhile from what is stored.
    """

    def __init__(self, owner: HttpCache, entries: dict[str, Any]) -> None:
        self._owner = owner
        self._entries = entries

    def __getitem__(self, key: str) -> Any:
        with self._owner._lock:
            return copy.deepcopy(self._entries[key])

    def __setitem__(self, key: str, value: Any) -> None:
        with self._owner._lock:
            self._entries[key] = value
            self._owner._dirty |= self._owner._kept(key)

    def __delitem__(self, key: str) -> None:
        with self._owner._lock:
            del self._entries[key]
            self._owner._dirty |= self._owner._kept(key)

    def __iter__(self) -> Iterator[str]:
        with self._owner._lock:
            return iter(list(self._entries))

    def __len__(self) -> int:
        return len(self._entries)


#: Every `AppTokens` alive, so an API's refusal of a token can drop it (`forget_refused`).
_live: weakref.WeakSet[AppTokens] = weakref.WeakSet()
_live_lock = threading.Lock()


#: How long before its end a token held for a stream is renewed: MSAL itself takes a cached
#: token with less than five minutes left as expired and asks for a new one.
RENEW_BEFORE = 5 * 60


class BearerHeaders(Mapping[str, str]):
    """Request headers holding one ``Authorization``: an app's token for one tenant and
    resource, asked for again once less than `RENEW_BEFORE` of it is left.

    A stream of requests can outlive a token: a token lives an hour at most, one saved by an
    earlier run may have only minutes left, and a tenant's devices listed user by user take
    a request each. Read for every request (and every retry of one), this header goes on
    with a new token where a header fixed at the start would be refused halfway (401).
    """

    def __init__(self, acquire: Callable[[], Mapping[str, Any]]) -> None:
        self._acquire = acquire
        self._lock = threading.Lock()
        self._value, self._until = self._fresh()

    def _fresh(self) -> tuple[str, float]:
        result = self._acquire()
        left = float(result.get("expires_in") or 0)
        return f"Bearer {result['access_token']}", time.monotonic() + left - RENEW_BEFORE

    def __getitem__(self, key: str) -> str:
        if key != "Authorization":
            raise KeyError(key)
        if time.monotonic() >= self._until:
            with self._lock:
                if time.monotonic() >= self._until:
                    self._value, self._until = self._fresh()
        return self._value

    def __iter__(self) -> Iterator[str]:
        return iter(("Authorization",))

    def __len__(self) -> int:
        return 1


class AppTokens:
    """Client-credentials tokens of one app registration, per tenant and resource.

    ``authority`` is the login host (``[endpoints] login``); ``secret`` is called when a
    client is first built, so a secret is read only when needed and never kept elsewhere.
    ``token_cache`` and ``http_cache`` keep tokens and tenant discovery between runs (see
    the module docstring); without them both live as long as this object.
    """

    def __init__(
        self,
        *,
        client_id: str,
        secret: Callable[[], str],
        authority: str,
        http: HttpClient,
        app_name: str,
        token_cache: AppTokenCache | None = None,
        http_cache: HttpCache | None = None,
    ) -> None:
        self.client_id = client_id
        self._secret = secret
        self.authority = authority.rstrip("/")
        self.http = MsalHttpClient(http)
        self.app_name = app_name
        self.token_cache = token_cache
        self.http_cache = http_cache
        self._clients: dict[str, msal.ConfidentialClientApplication] = {}
        self._locks: dict[tuple[str, str], threading.Lock] = {}
        self._guard = threading.Lock()
        with _live_lock:
            _live.add(self)

    def _client(self, tenant: str) -> msal.ConfidentialClientApplication:
        # One client per tenant, even when two resources of it are asked for at once.
        with self._lock(tenant, ""):
            client = self._clients.get(tenant)
            if client is None:
                client = msal.ConfidentialClientApplication(
                    self.client_id,
                    client_credential=self._secret(),
                    authority=f"{self.authority}/{tenant}",
                    # The login host is a setting (sovereign clouds, the emulator): ask it
                    # for its endpoints directly rather than validating it with the public
                    # cloud.
                    instance_discovery=False,
                    http_client=self.http,
                    token_cache=self.token_cache.cache if self.token_cache else None,
                    http_cache=(
                        self.http_cache.partition(f"{self.client_id} {tenant}")
                        if self.http_cache
                        else None
                    ),
                )
                self._clients[tenant] = client
                if self.http_cache:
                    self.http_cache.save()
        return client

    def _lock(self, tenant: str, resource: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault((tenant, resource), threading.Lock())

    def token(self, tenant: str, resource: str) -> str:
        """An access token for ``resource`` (e.g. `GRAPH_RESOURCE`) in ``tenant``."""
        return self._acquire(tenant, resource)["access_token"]

    def _acquire(self, tenant: str, resource: str) -> dict[str, Any]:
        """MSAL's result for a token: ``access_token`` and ``expires_in`` (seconds left)."""
        with self._lock(tenant, resource):
            try:
                client = self._client(tenant)
            except ValueError as exc:  # MSAL could not discover the tenant's endpoints
                raise token_error(
                    {"error": "invalid_tenant", "error_description": str(exc)},
                    tenant=tenant,
                    app=self.app_name,
                ) from None
            result = client.acquire_token_for_client([f"{resource}/.default"])
        if self.token_cache:
            self.token_cache.save()  # outside the lock: a slow disk holds no other token up
        if "access_token" not in result:
            raise token_error(result, tenant=tenant, app=self.app_name)
        return result

    def headers(self, tenant: str, resource: str) -> BearerHeaders:
        """The ``Authorization`` header for calls to ``resource`` in ``tenant``, renewed as
        its token nears its end (`BearerHeaders`). The first token is asked for now, so a
        tenant that refuses the app says so here."""
        return BearerHeaders(lambda: self._acquire(tenant, resource))

    def forget(self, tenant: str) -> int:
        """Drop this app's cached tokens for ``tenant``, so the next one is asked for anew.

        For when an API refused a token MSAL still holds good (a login service that forgot
        it, as an emulator started again does). Returns how many were dropped.
        """
        client = self._clients.get(tenant)
        cache = self.token_cache.cache if self.token_cache else client and client.token_cache
        if cache is None:
            return 0
        tenant = tenant.lower()
        stale = [
            token
            for token in cache.search(
                msal.TokenCache.CredentialType.ACCESS_TOKEN, query={"client_id": self.client_id}
            )
            if str(token.get("realm", "")).lower() == tenant
        ]
        for token in stale:
            cache.remove_at(token)
        if self.token_cache:
            self.token_cache.save()
        if stale:
            log.info("csp.app_tokens_dropped", app=self.app_name, tenant=tenant, count=len(stale))
        return len(stale)


def forget_refused(tenant: str, app_name: str) -> None:
    """An API answered 401 to a token of app ``app_name`` in ``tenant``: drop the tokens
    every `AppTokens` of that app holds for the tenant, so the next call asks anew."""
    with _live_lock:
        holders = [tokens for tokens in _live if tokens.app_name == app_name]
    for tokens in holders:
        with contextlib.suppress(Exception):  # never hide the refusal being reported
            tokens.forget(tenant)
