"""Tenant mappings proposed from names, for `csp map --auto`.

The guide recommends mapping tenants by hand "unless you are sure the names match those
already existing" (4.1), so a proposal is made only where a name leaves no doubt: the
tenant's name equals one customer's name exactly, or, failing that, exactly one customer's
name is the same once both are normalised. A name that fits two or more customers is
reported with its candidates and mapped by nobody. Tenants mapped in the config already are
never proposed again: a mapping written by hand always wins.

Everything here is pure (names in, proposals and text out) so the rules are tested without a
store or a config file.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from datetime import date
from typing import Literal

import attrs
import tomlkit
from tomlkit.items import Table

from halo_integrator_core.config_edit import CannotAppend as CannotAppend  # re-exported
from halo_integrator_core.config_edit import append_tables, render_tables

#: Words that say what kind of company a name belongs to, not which one. Dropped from the end
#: of a name (repeatedly: "Contoso Holdings Ltd" is "contoso"), never from its middle.
COMPANY_SUFFIXES = frozenset(
    {
        "ltd",
        "limited",
        "inc",
        "incorporated",
        "llc",
        "llp",
        "group",
        "holdings",
        "plc",
        "gmbh",
        "corp",
        "corporation",
        "co",
        "company",
    }
)

MatchKind = Literal["exact", "normalised"]


def normalise(name: str) -> str:
    """``name`` reduced to what tells companies apart, for comparing names.

    Case-folded; "&" read as "and"; dots and apostrophes dropped (so "L.L.C." is "llc" and
    "O'Neil" is "oneil"); any other punctuation and runs of whitespace become one space; then
    company suffixes are dropped from the end, as long as a word is left.
    """
    text = unicodedata.normalize("NFKC", name).casefold()
    text = text.replace("&", " and ")
    text = re.sub(r"[.'’`]", "", text)
    words = re.sub(r"[\W_]+", " ", text).split()
    while len(words) > 1 and words[-1] in COMPANY_SUFFIXES:
        words.pop()
    return " ".join(words)


@attrs.frozen
class TenantName:
    """A stored tenant, as the matcher sees it."""

    tenant_id: str
    name: str


@attrs.frozen
class ProposedMapping:
    """Map ``tenant_id`` to the existing customer ``customer``, found by a ``match``."""

    tenant_id: str
    tenant_name: str
    customer: str
    match: MatchKind


@attrs.frozen
class Ambiguity:
    """A tenant whose name fits several customers: left unmapped, for a person to decide."""

    tenant_id: str
    tenant_name: str
    candidates: tuple[str, ...]


@attrs.frozen
class Proposals:
    """What `propose` found, each list in the order the tenants were given."""

    mapped: tuple[ProposedMapping, ...] = ()
    ambiguous: tuple[Ambiguity, ...] = ()
    unmatched: tuple[TenantName, ...] = ()
    #: Tenants the config maps already (by hand or by an earlier run): left as they are.
    already_mapped: tuple[TenantName, ...] = ()


def propose(
    tenants: Iterable[TenantName | tuple[str, str]],
    customers: Iterable[str],
    mapped_tenant_ids: Iterable[str],
) -> Proposals:
    """Propose a customer for each tenant not in ``mapped_tenant_ids``.

    ``tenants`` are (tenant ID, name) pairs; a tenant ID given twice (one tenant reached by
    two connections) is considered once. ``customers`` are the names of existing customers.
    An exact match wins; otherwise the normalised name must fit exactly one customer.
    """
    customer_names = sorted(set(customers))
    by_normalised: dict[str, list[str]] = {}
    for customer in customer_names:
        key = normalise(customer)
        if key:
            by_normalised.setdefault(key, []).append(customer)
    exact = set(customer_names)
    done = {tenant_id.lower() for tenant_id in mapped_tenant_ids}
    seen: set[str] = set()
    mapped: list[ProposedMapping] = []
    ambiguous: list[Ambiguity] = []
    unmatched: list[TenantName] = []
    already: list[TenantName] = []
    for item in tenants:
        tenant = item if isinstance(item, TenantName) else TenantName(*item)
        key = tenant.tenant_id.lower()
        if key in seen:
            continue
        seen.add(key)
        if key in done:
            already.append(tenant)
            continue
        if tenant.name in exact:
            mapped.append(ProposedMapping(tenant.tenant_id, tenant.name, tenant.name, "exact"))
            continue
        candidates = by_normalised.get(normalise(tenant.name), [])
        if len(candidates) == 1:
            mapped.append(
                ProposedMapping(tenant.tenant_id, tenant.name, candidates[0], "normalised")
            )
        elif candidates:
            ambiguous.append(Ambiguity(tenant.tenant_id, tenant.name, tuple(candidates)))
        else:
            unmatched.append(tenant)
    return Proposals(tuple(mapped), tuple(ambiguous), tuple(unmatched), tuple(already))


# --- writing them into the config ------------------------------------------------------------


def proposal_comment(proposal: ProposedMapping, on: date) -> str:
    """The comment that says where a written mapping came from (one line, whatever the name)."""
    name = " ".join(proposal.tenant_name.split())  # no line breaks inside a comment
    return f'proposed by csp map --auto on {on.isoformat()}: {proposal.match} match of "{name}"'


def _tables(proposals: Iterable[ProposedMapping], on: date) -> list[Table]:
    tables = []
    for proposal in proposals:
        table = tomlkit.table()
        table.add(tomlkit.comment(proposal_comment(proposal, on)))
        table.add("tenant_id", proposal.tenant_id)
        table.add("customer", proposal.customer)
        tables.append(table)
    return tables


def render_mappings(proposals: Iterable[ProposedMapping], on: date) -> str:
    """``[[tenant_mappings]]`` tables for ``proposals``, rendered by tomlkit (quoting and all)."""
    return render_tables("tenant_mappings", _tables(proposals, on))


def append_mappings(text: str, proposals: Iterable[ProposedMapping], on: date) -> str:
    """``text`` (a config file) with ``proposals`` appended as ``[[tenant_mappings]]`` tables,
    the file's own text kept byte for byte (see `append_tables`)."""
    return append_tables(text, "tenant_mappings", _tables(proposals, on))
