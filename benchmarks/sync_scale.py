"""Sync speed and memory at MSP scale, against the built-in Microsoft emulator (issue 10).

    python benchmarks/sync_scale.py                       # 20 customers x 2,000 users x 1,000 devices
    python benchmarks/sync_scale.py --latency-ms 100      # each request answered 100 ms late
    python benchmarks/sync_scale.py --customers 100 --users 2000 --devices 1000 --json out.json

It starts ``halo-integrator emulator`` in a process of its own, then measures five runs, each
in a fresh process so that its peak RSS is the syncing process's own:

| row | what runs |
|---|---|
| raw | a minimal `requests` client: every page the sync reads (same URLs, ``$select`` and page sizes, as many tenants at once as the sync, ``--parallel``), JSON-decoded and dropped; tokens fetched once per tenant |
| floor | raw, plus one ``executemany`` per page into a bare SQLite table: the least work any fetch-and-store sync can do |
| full | ``halo-integrator sync`` into a fresh SQLite store (tenants, licences, subscriptions, users, assets) |
| unchanged | the same sync again, nothing changed upstream |
| delta | ``halo-integrator sync --only users`` by delta links (``track = "beta"``, ``use_deltas``) after 1% of users changed (``/_admin/change-users``); its store was filled by an unmeasured first run |

The five rows are measured ``--repeat`` times (3 by default), each round with stores and
tokens of its own; a row's figure is its median wall time, a ratio the median of the rounds'
own ratios, a peak RSS the highest of any round: on a shared machine one run's seconds can
move by a third. Each row also has the CPU seconds of its process (all threads, user and
system) and of the emulator while it ran (Linux): the two share the machine's cores, so
the CPU shows what bounds a row where its wall time alone cannot. It prints a table and
the ratios, writes JSON (``--json``, every round's figures too), and exits 1 when a target
of `TARGETS` that applies at this size and latency is missed (``--no-targets``: measure
only).
Not a test: pytest collects ``tests/`` only (where one test checks the report's target
checks on made-up figures, by loading this file).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

KINDS = ("tenants", "licences", "subscriptions", "users", "assets")


# --- targets (issue 10, part 2) -----------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """``numerator / denominator <= limit`` (a row's peak RSS in MB when ``rss`` is set),
    checked only when ``applies(args)`` holds."""

    name: str
    numerator: str
    denominator: str | None
    limit: float
    applies: Callable[[argparse.Namespace], bool]
    rss: bool = False


TARGETS = (
    Target(
        "full <= 1.5 x floor (no added latency)", "full", "floor", 1.5, lambda a: a.latency_ms == 0
    ),
    Target(
        "full <= 1.15 x raw (--latency-ms 100)", "full", "raw", 1.15, lambda a: a.latency_ms >= 100
    ),
    # These two measure our work, so they apply with no added latency: with it, both runs
    # wait on the same pages (unchanged ~ full ~ raw, once full hides behind the network),
    # and a delta still needs a request per tenant where a full listing needs ~15.
    Target(
        "unchanged <= 0.7 x full (no added latency)",
        "unchanged",
        "full",
        0.7,
        lambda a: a.latency_ms == 0,
    ),
    Target(
        "delta (1% changed) <= 0.05 x full (no added latency)",
        "delta",
        "full",
        0.05,
        lambda a: a.latency_ms == 0,
    ),
    Target(
        "full peak RSS <= 250 MB at 100 x 2,000 x 1,000",
        "full",
        None,
        250.0,
        lambda a: (a.customers, a.users, a.devices) == (100, 2000, 1000),
        rss=True,
    ),
)
# "Peak RSS at 10,000 users per tenant within 20% of that at 1,000" compares two runs:
# `--rss-baseline` names the JSON of the 1,000-users run when this one has 10,000.
RSS_GROWTH_LIMIT = 1.2


# --- the emulator ------------------------------------------------------------------------


def start_emulator(args: argparse.Namespace, state_dir: Path) -> tuple[subprocess.Popen, dict]:
    """``halo-integrator emulator`` in a process of its own; returns it and what it serves."""
    command = [
        sys.executable, "-c", "from halo_integrator_core.cli import main; main()", "emulator",
        "--port", "0", "--seed", str(args.seed), "--customers", str(args.customers),
        "--users", str(args.users), "--devices", str(args.devices),
        "--state-dir", str(state_dir), "--latency-ms", str(args.latency_ms),
    ]  # fmt: skip
    if getattr(args, "tenant_budget", None):
        command += ["--tenant-budget", args.tenant_budget]
    env = {k: v for k, v in os.environ.items() if k != "HALO_INTEGRATOR_CONFIG"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    lines = []
    for line in process.stdout:  # type: ignore[union-attr]
        lines.append(line)
        if line.startswith("# export HALO_EMULATOR_GDAP_SECRET="):
            break
    else:
        raise SystemExit(f"the emulator stopped before serving (exit {process.wait()})")
    snippet = "".join(lines)
    data = tomllib.loads(snippet)
    [connection] = data["modules"]["microsoft_csp"]["connections"]
    secrets = dict(re.findall(r"# export (HALO_EMULATOR_\w+?)=(\S+)", snippet))
    served = {
        "pid": process.pid,
        "endpoints": data["endpoints"],
        "admin": data["endpoints"]["graph"].rsplit("/graph", 1)[0] + "/_admin",
        "partner_tenant": connection["tenant_id"],
        "partner_center_app": {
            "client_id": connection["partner_center_app"]["client_id"],
            "secret": secrets["HALO_EMULATOR_PC_SECRET"],
        },
        "gdap_app": {
            "client_id": connection["gdap_app"]["client_id"],
            "secret": secrets["HALO_EMULATOR_GDAP_SECRET"],
        },
    }
    return process, served


def admin_post(served: dict, path: str, body: dict) -> dict:
    import requests

    answer = requests.post(
        served["admin"] + path, json=body, verify=served["endpoints"]["ca_bundle"], timeout=300
    )
    answer.raise_for_status()
    return answer.json() if answer.content else {}


def admin_get(served: dict, path: str) -> dict:
    import requests

    answer = requests.get(
        served["admin"] + path, verify=served["endpoints"]["ca_bundle"], timeout=60
    )
    answer.raise_for_status()
    return answer.json()


# --- configs for the real sync -------------------------------------------------------------


def write_config(
    directory: Path,
    served: dict,
    *,
    deltas: bool,
    parallel: int,
    budget: tuple[int, float] | None = None,
) -> Path:
    """A config pointing at the emulator, with the apps' secrets in files, authorized as
    `halo-integrator demo` authorizes it."""
    from halo_integrator_core.config import load_config
    from halo_microsoft_emulator.demo import authorize_through_emulator

    directory.mkdir(parents=True)
    files = {}
    for name in ("partner_center_app", "gdap_app"):
        path = directory / f"{name}.secret"
        path.write_text(served[name]["secret"] + "\n", encoding="utf-8")
        path.chmod(0o600)
        files[name] = path
    endpoints = "\n".join(f'{k} = "{v}"' for k, v in served["endpoints"].items())
    beta = 'track = "beta"\n' if deltas else ""
    users = "[users]\nuse_deltas = true\n" if deltas else ""
    throttling = (
        f"[throttling]\ngraph_requests = {budget[0]}\ngraph_window_seconds = {budget[1]}\n"
        if budget
        else ""
    )
    config = directory / "halo-integrator.toml"
    config.write_text(
        f"""[endpoints]
{endpoints}

[integrator]
{beta}parallel_tenants = {parallel}
create_customers_from_tenants = true
create_site_mappings_for_new_tenants = true

{users}
{throttling}
[modules.microsoft_csp]
enabled = true

[[modules.microsoft_csp.connections]]
name = "emulator"
tenant_id = "{served["partner_tenant"]}"
relationship_mode = "gdap_and_dap"
licence_import_type = "subscriptions_and_skus"
partner_center_app = {{ client_id = "{served["partner_center_app"]["client_id"]}", client_secret = {{ file = "{files["partner_center_app"]}" }} }}
gdap_app = {{ client_id = "{served["gdap_app"]["client_id"]}", client_secret = {{ file = "{files["gdap_app"]}" }} }}
""",
        encoding="utf-8",
    )
    authorize_through_emulator(load_config(config), None)  # type: ignore[arg-type]
    return config


# --- the measured runs (each in a worker process) -----------------------------------------


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_worker(spec: dict) -> dict:
    if spec["mode"] in ("raw", "floor"):
        return _run_client(spec)
    return _run_sync(spec)


def _run_client(spec: dict) -> dict:
    """raw and floor: the sync's requests, decoded and dropped (or bare-inserted)."""
    import requests

    served, select = spec["served"], spec["select"]
    endpoints = served["endpoints"]
    verify = endpoints["ca_bundle"]  # per request: REQUESTS_CA_BUNDLE beats Session.verify
    graph, pc = endpoints["graph"], endpoints["partner_center"]
    http = requests.Session()
    counts = dict.fromkeys(KINDS, 0)
    db = None
    if spec["mode"] == "floor":
        db = sqlite3.connect(spec["database"], check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("CREATE TABLE rows (kind TEXT, tenant TEXT, id TEXT, body TEXT)")

    lock = threading.Lock()  # one writer, as the sync's units take turns

    def store(kind: str, tenant: str, items: list[dict], key: str = "id") -> None:
        rows = [(kind, tenant, str(i.get(key)), json.dumps(i)) for i in items]
        with lock:
            counts[kind] += len(items)
            if db is not None and rows:
                db.executemany("INSERT INTO rows VALUES (?, ?, ?, ?)", rows)

    def commit() -> None:  # per tenant and kind, as the store commits
        if db is not None:
            with lock:
                db.commit()

    def token(tenant: str, app: str, resource_: str) -> dict[str, str] | None:
        answer = http.post(
            f"{endpoints['login']}/{tenant}/oauth2/v2.0/token",
            data={
                "grant_type": "client_credentials",
                "client_id": served[app]["client_id"],
                "client_secret": served[app]["secret"],
                "scope": f"{resource_}/.default",
            },
            verify=verify,
            timeout=60,
        )
        if answer.status_code != 200:
            return None  # no consent: the sync skips the tenant's directory too
        return {"Authorization": "Bearer " + answer.json()["access_token"]}

    def odata(url: str, headers: dict, params: dict | None = None):
        while url:
            answer = http.get(url, params=params, headers=headers, verify=verify, timeout=60)
            answer.raise_for_status()
            body = answer.json()
            yield body.get("value", [])
            url, params = body.get("@odata.nextLink"), None

    def partner_center(path: str, headers: dict, params: dict | None = None):
        url, extra = pc + path, {}
        while True:
            answer = http.get(
                url, params=params, headers={**headers, **extra}, verify=verify, timeout=60
            )
            answer.raise_for_status()
            body = answer.json()
            yield body["items"]
            link = (body.get("links") or {}).get("next")
            if not link or not link.get("uri"):
                return
            uri = link["uri"] if link["uri"].startswith("/") else "/" + link["uri"]
            url = pc + (uri if uri.startswith("/v1/") else "/v1" + uri)
            extra = {h["key"]: h["value"] for h in link.get("headers") or ()}
            params = None

    started, started_cpu = time.perf_counter(), time.process_time()
    partner = served["partner_tenant"]
    pc_headers = token(partner, "partner_center_app", "https://api.partnercenter.microsoft.com")
    resellers = set()
    for page in partner_center("/v1/customers", pc_headers, {"size": select["customers_page"]}):
        resellers.update(c["companyProfile"]["tenantId"].lower() for c in page)
    active: set[str] = set()
    known: set[str] = set()
    partner_graph = token(partner, "partner_center_app", "https://graph.microsoft.com")
    for page in odata(f"{graph}/v1.0/tenantRelationships/delegatedAdminRelationships",
                      partner_graph):  # fmt: skip
        for relationship in page:
            tenant_id = relationship["customer"]["tenantId"].lower()
            known.add(tenant_id)
            if relationship.get("status") in ("active", "expiring"):
                active.add(tenant_id)
    tenants = sorted(known | resellers)
    counts["tenants"] = len(tenants)

    def one_tenant(tenant: str) -> None:
        headers = (
            token(tenant, "gdap_app", "https://graph.microsoft.com") if tenant in active else None
        )
        if headers is not None:
            for items in odata(f"{graph}/v1.0/subscribedSkus", headers):
                store("licences", tenant, items, "skuId")
            commit()
        if tenant in resellers:
            for items in partner_center(f"/v1/customers/{tenant}/subscriptions", pc_headers):
                store("subscriptions", tenant, items)
            commit()
        if headers is None:
            return
        for items in odata(f"{graph}/v1.0/users/delta", headers, {"$select": select["users"]}):
            store("users", tenant, items)
        commit()
        for items in odata(f"{graph}/v1.0/deviceManagement/managedDevices", headers,
                           {"$select": select["devices"]}):  # fmt: skip
            store("assets", tenant, items)
        commit()

    # As many tenants at once as the sync (`integrator.parallel_tenants`).
    with ThreadPoolExecutor(spec["parallel"]) as pool:
        list(pool.map(one_tenant, tenants))
    wall, cpu = time.perf_counter() - started, time.process_time() - started_cpu
    return {
        "wall": wall, "cpu": cpu, "records": sum(counts.values()), "counts": counts,
        "rss": peak_rss_mb(),
    }  # fmt: skip


def _run_sync(spec: dict) -> dict:
    """full, unchanged, delta: ``halo-integrator sync`` in this process, its summary parsed."""
    from halo_integrator_core import cli

    argv = ["halo-integrator", "--config", spec["config"], "sync", *spec.get("sync_args", [])]
    sys.argv = argv
    out = io.StringIO()
    profile = None
    if spec.get("profile"):
        import cProfile

        profile = cProfile.Profile()
    started, started_cpu = time.perf_counter(), time.process_time()
    code = 0
    with contextlib.redirect_stdout(out):
        if profile:
            profile.enable()
        try:
            cli.main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        finally:
            if profile:
                profile.disable()
    wall, cpu = time.perf_counter() - started, time.process_time() - started_cpu
    if profile:
        profile.dump_stats(spec["profile"])
    summary = out.getvalue()
    counts = _summary_counts(summary)
    return {
        "wall": wall,
        "cpu": cpu,
        "records": sum(sum(c.values()) for c in counts.values()),
        "counts": {kind: sum(c.values()) for kind, c in counts.items()},
        "changes": counts,
        "rss": peak_rss_mb(),
        "exit": code,
        "summary": summary,
    }


def _summary_counts(summary: str) -> dict[str, dict[str, int]]:
    """kind → {added, updated, unchanged, ...} from `print_summary`'s table."""
    counts: dict[str, dict[str, int]] = {}
    header: list[str] | None = None
    for line in summary.splitlines():
        cells = line.split()
        if cells[:1] == ["kind"]:
            header = cells[1:]
        elif header and len(cells) == len(header) + 1 and all(c.isdigit() for c in cells[1:]):
            counts[cells[0]] = dict(zip(header, map(int, cells[1:]), strict=True))
    return counts


def process_cpu(pid: int | None) -> float | None:
    """The CPU seconds (user and system) process ``pid`` has used so far, from Linux's
    ``/proc``; None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text(encoding="ascii").rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def measure(spec: dict, workdir: Path) -> dict:
    """Run ``spec`` in a fresh process; its result, with the CPU the emulator spent
    meanwhile (serving it: the two share the machine's cores)."""
    emulator = spec.get("served", {}).get("pid")
    emulator_before = process_cpu(emulator)
    spec_path = workdir / f"{spec['mode']}.spec.json"
    spec_path.write_text(json.dumps(spec), encoding="utf-8")
    log = workdir / f"{spec['mode']}.log"
    with log.open("w", encoding="utf-8") as stderr:
        done = subprocess.run(
            [sys.executable, __file__, "--worker", str(spec_path)],
            stdout=subprocess.PIPE, stderr=stderr, text=True, check=False,
        )  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"{spec['mode']} failed (exit {done.returncode}); see {log}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    emulator_after = process_cpu(emulator)
    if emulator_before is not None and emulator_after is not None:
        result["emulator_cpu"] = emulator_after - emulator_before
    if result.get("exit"):
        raise SystemExit(f"{spec['mode']}: sync exited {result['exit']}:\n{result['summary']}")
    return result


# --- throttling at the limit (issue 10, part 3) ------------------------------------------

#: A 50-tenant sync under Graph's budget finishes within this many times the least time the
#: budget allows its busiest tenant, and wastes no request on a retry certain to fail.
THROTTLE_LIMIT = 1.3


def parse_budget(text: str) -> tuple[int, float]:
    requests, _, seconds = text.partition("/")
    try:
        return int(requests), float(seconds)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give REQUESTS/SECONDS, e.g. 1/1") from None


def measure_throttled(args: argparse.Namespace, workdir: Path) -> dict:
    """A full sync of ``--throttle-customers`` tenants, side by side, against an emulator
    that holds Graph to ``--throttle-budget`` per app per tenant, the client told the same
    budget (`[throttling]`). Its wall time against the least the budget allows the busiest
    tenant: ``(requests - 1) // N`` full windows before its last request may go. Measured
    on a second run, as a scheduled sync finds things: store made, tokens kept."""
    requests, window = args.throttle_budget
    size = argparse.Namespace(
        seed=args.seed, customers=args.throttle_customers, users=args.throttle_users,
        devices=args.throttle_devices, latency_ms=0, tenant_budget=f"{requests}/{window}",
    )  # fmt: skip
    emulator, served = start_emulator(size, workdir / "throttle-emulator")
    try:
        config = write_config(
            workdir / "throttled", served, deltas=False,
            parallel=args.throttle_customers, budget=(requests, window),
        )  # fmt: skip
        # As the daemon syncs every few minutes: the store made and the tokens kept by a
        # first run (not measured), then the budget's window left to empty.
        measure({"mode": "throttled-first", "config": str(config)}, workdir)
        time.sleep(window)
        admin_post(served, "/budget/reset", {})
        result = measure({"mode": "throttled", "config": str(config)}, workdir)
        budget = admin_get(served, "/budget")
    finally:
        emulator.terminate()
        emulator.wait(timeout=30)
    tenants = budget["tenants"]
    busiest = max(t["requests"] for t in tenants.values())
    least = ((busiest - 1) // requests) * window
    return {
        "customers": args.throttle_customers,
        "budget": {"requests": requests, "window_seconds": window},
        "wall": result["wall"],
        "records": result["records"],
        "busiest_tenant_requests": busiest,
        "busiest_tenant_least_seconds": least,
        "ratio": result["wall"] / least if least else None,
        "graph_requests": sum(t["requests"] for t in tenants.values()),
        "throttled": sum(t["throttled"] for t in tenants.values()),
        "wasted": sum(t["wasted"] for t in tenants.values()),
    }


def measure_round(
    args: argparse.Namespace, served: dict, select: dict, workdir: Path, profile: Path | None
) -> dict[str, dict]:
    """The five rows once, each in a fresh process; the syncs in stores (and with tokens)
    of this round's own."""
    workdir.mkdir(parents=True)
    full_config = write_config(workdir / "full", served, deltas=False, parallel=args.parallel)
    delta_config = write_config(workdir / "delta", served, deltas=True, parallel=args.parallel)
    plan = [
        ("raw", {}),
        ("floor", {"database": str(workdir / "floor.db")}),
        ("full", {"config": str(full_config), "profile": str(profile) if profile else None}),
        ("unchanged", {"config": str(full_config)}),
    ]
    rows: dict[str, dict] = {}
    for mode, extra in plan:
        print(f"measuring {mode} ...", file=sys.stderr)
        spec = {"mode": mode, "served": served, "select": select, "parallel": args.parallel}
        rows[mode] = measure(spec | extra, workdir)
    print("delta: first run (not measured), then 1% of users changed ...", file=sys.stderr)
    delta = {"config": str(delta_config), "served": served}
    measure(delta | {"mode": "delta-first"}, workdir)
    changed = admin_post(served, "/change-users", {"fraction": 0.01})["changed"]
    rows["delta"] = measure(delta | {"mode": "delta", "sync_args": ["--only", "users"]}, workdir)
    rows["delta"]["changed_upstream"] = changed
    return rows


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a whole number of rounds, 1 or more")
    return value


# --- the report ---------------------------------------------------------------------------


RATIOS = (("full", "floor"), ("full", "raw"), ("unchanged", "full"), ("delta", "full"))


def ratios(rounds: list[dict[str, dict]]) -> dict[str, float]:
    """Each ratio of `RATIOS` in each round, then its median over the rounds: the rows of
    one round ran minutes apart at most, so a machine slowing for a while moves both sides
    of a round's ratio, and one slow round does not move the median."""
    return {
        f"{a}/{b}": statistics.median(round_[a]["wall"] / round_[b]["wall"] for round_ in rounds)
        for a, b in RATIOS
    }


def combine(rounds: list[dict[str, dict]]) -> dict[str, dict]:
    """One row per run: the median wall time of the rounds (and each round's), the median
    CPU seconds of the measured process and of the emulator meanwhile, the records of the
    first round, the highest peak RSS of any."""
    rows: dict[str, dict] = {}
    for name, first in rounds[0].items():
        walls = [round_[name]["wall"] for round_ in rounds]
        rows[name] = {
            **first,
            "wall": statistics.median(walls),
            "walls": walls,
            "rss": max(round_[name]["rss"] for round_ in rounds),
        }
        for key in ("cpu", "emulator_cpu"):
            values = [round_[name][key] for round_ in rounds if round_[name].get(key) is not None]
            rows[name][key] = statistics.median(values) if values else None
    return rows


def check_targets(
    args: argparse.Namespace,
    rows: dict[str, dict],
    ratio: dict[str, float],
    throttled: dict | None = None,
) -> list[dict]:
    checks = []
    if throttled is not None:
        budget_ratio = throttled["ratio"]
        checks.append({"target": f"throttled {throttled['customers']}-tenant sync <= "
                                 f"{THROTTLE_LIMIT} x the busiest tenant's budget time",
                       "value": round(budget_ratio, 3) if budget_ratio else None,
                       "limit": THROTTLE_LIMIT,
                       "met": budget_ratio is not None and budget_ratio <= THROTTLE_LIMIT})  # fmt: skip
        checks.append({"target": "no request wasted on a retry the budget made certain to fail",
                       "value": throttled["wasted"], "limit": 0,
                       "met": throttled["wasted"] == 0})  # fmt: skip
    for target in TARGETS:
        if not target.applies(args):
            continue
        if target.rss:
            value = rows[target.numerator]["rss"]
        else:
            value = ratio[f"{target.numerator}/{target.denominator}"]
        checks.append({"target": target.name, "value": round(value, 3), "limit": target.limit,
                       "met": value <= target.limit})  # fmt: skip
    if args.rss_baseline:
        baseline = json.loads(Path(args.rss_baseline).read_text(encoding="utf-8"))
        base = baseline["size"]
        if base["users"] == 1000 and args.users == 10000:
            value = rows["full"]["rss"] / baseline["rows"]["full"]["rss"]
            checks.append({"target": "full peak RSS at 10,000 users/tenant <= 1.2 x at 1,000",
                           "value": round(value, 3), "limit": RSS_GROWTH_LIMIT,
                           "met": value <= RSS_GROWTH_LIMIT})  # fmt: skip
    return checks


def print_report(
    rows: dict[str, dict],
    ratio: dict[str, float],
    checks: list[dict],
    throttled: dict | None,
) -> None:
    rounds = len(next(iter(rows.values()))["walls"])
    print(f"{'run':<10} {'wall s':>8} {'CPU s':>7} {'emul. CPU s':>11} {'records':>9} "
          f"{'records/s':>10} {'peak RSS MB':>12}"
          + ("   wall s of each round" if rounds > 1 else ""))  # fmt: skip
    for name, row in rows.items():
        rate = row["records"] / row["wall"] if row["wall"] else 0
        each = "   " + " ".join(f"{w:.2f}" for w in row["walls"]) if rounds > 1 else ""
        cpu, emulator = (
            "" if row.get(key) is None else f"{row[key]:.2f}" for key in ("cpu", "emulator_cpu")
        )
        print(
            f"{name:<10} {row['wall']:>8.2f} {cpu:>7} {emulator:>11} {row['records']:>9} "
            f"{rate:>10.0f} {row['rss']:>12.0f}" + each
        )
    print("(CPU s: the measured process's, user and system, all its threads; emul. CPU s: "
          "the emulator's meanwhile)")  # fmt: skip
    print()
    if rounds > 1:
        print(f"ratios: the median of the {rounds} rounds' own")
    for name, value in ratio.items():
        print(f"{name:<15} {value:6.2f}")
    if throttled is not None:
        budget = throttled["budget"]
        print(
            f"\nthrottled: {throttled['customers']} tenants under {budget['requests']} Graph "
            f"request(s) per {budget['window_seconds']:g} s per tenant: {throttled['wall']:.2f} s; "
            f"busiest tenant {throttled['busiest_tenant_requests']} requests, least "
            f"{throttled['busiest_tenant_least_seconds']:g} s; ratio "
            f"{throttled['ratio']:.2f}; {throttled['throttled']} answered 429, "
            f"{throttled['wasted']} wasted"
        )
    if checks:
        print()
        for check in checks:
            verdict = "met" if check["met"] else "MISSED"
            print(f"{verdict:<7} {check['target']}: {check['value']} (limit {check['limit']})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--customers", type=int, default=20)
    parser.add_argument("--users", type=int, default=2000, help="users per tenant (about)")
    parser.add_argument("--devices", type=int, default=1000, help="devices per tenant (about)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--parallel", type=int, default=4,
                        help="tenants at once (integrator.parallel_tenants; raw and floor too)")  # fmt: skip
    parser.add_argument("--latency-ms", type=int, default=0,
                        help="answer each Microsoft request this late")  # fmt: skip
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--no-targets", action="store_true", help="measure only; exit 0")
    parser.add_argument(
        "--rss-baseline", help="JSON of a 1,000-users run, for the RSS growth target"
    )
    parser.add_argument("--profile", type=Path, help="cProfile the full run into this file")
    parser.add_argument("--no-throttle", action="store_true",
                        help="skip the throttled run (part 3)")  # fmt: skip
    parser.add_argument("--throttle-customers", type=int, default=50)
    parser.add_argument("--throttle-users", type=int, default=600)
    parser.add_argument("--throttle-devices", type=int, default=100)
    parser.add_argument("--throttle-budget", type=parse_budget, default=(1, 2.0),
                        metavar="N/SECONDS", help="Graph requests per window per tenant")  # fmt: skip
    parser.add_argument("--repeat", type=_positive, default=3,
                        help="rounds of the five rows; the report takes each figure's median")  # fmt: skip
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        spec = json.loads(Path(args.worker).read_text(encoding="utf-8"))
        print(json.dumps(run_worker(spec)))
        return

    from halo_microsoft_csp.devices import DEVICE_SELECT
    from halo_microsoft_csp.directory import CUSTOMERS_PAGE
    from halo_microsoft_csp.users import USER_SELECT

    select = {"users": USER_SELECT, "devices": DEVICE_SELECT, "customers_page": CUSTOMERS_PAGE}
    workdir = Path(tempfile.mkdtemp(prefix="halo-bench-"))
    print(f"emulator: {args.customers} customers x {args.users} users x {args.devices} devices, "
          f"latency {args.latency_ms} ms; work folder {workdir}", file=sys.stderr)  # fmt: skip
    emulator, served = start_emulator(args, workdir / "emulator")
    rounds: list[dict[str, dict]] = []
    try:
        for number in range(1, args.repeat + 1):
            print(f"round {number} of {args.repeat}", file=sys.stderr)
            profile = args.profile.resolve() if args.profile and number == 1 else None
            rounds.append(measure_round(args, served, select, workdir / f"round-{number}", profile))
        emulator.terminate()
        emulator.wait(timeout=30)
        throttled = None
        if not args.no_throttle:
            print(f"throttled: {args.throttle_customers} tenants under a budget ...",
                  file=sys.stderr)  # fmt: skip
            throttled = measure_throttled(args, workdir)
    finally:
        emulator.terminate()
        emulator.wait(timeout=30)
        if args.keep:
            print(f"kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    rows = combine(rounds)
    ratio = ratios(rounds)
    checks = check_targets(args, rows, ratio, throttled)
    print_report(rows, ratio, checks, throttled)
    result = {
        "size": {"customers": args.customers, "users": args.users, "devices": args.devices,
                 "seed": args.seed, "latency_ms": args.latency_ms, "parallel": args.parallel},
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "rows": {name: {k: v for k, v in row.items() if k != "summary"} for name, row in rows.items()},
        "rounds": [{name: {k: v for k, v in row.items() if k != "summary"}
                    for name, row in round_.items()} for round_ in rounds],
        "ratios": ratio,
        "throttled": throttled,
        "targets": checks,
    }  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print("\n" + json.dumps(result))
    if not args.no_targets and not all(check["met"] for check in checks):
        sys.exit(1)


if __name__ == "__main__":
    main()
