"""Digests of what a row was written from, so that an unchanged record costs a comparison.

A user's or an asset's row is a function of its record (what the plugin yielded) and of the
rules that turn records into rows: the configuration, and what of the store those rules
read (the tenant's customer and sites, its licences, its users for the devices' owners).
The digest of a record is taken over both; the engine stores it with the row, and when the
next sync fetches a record of the same digest the row is left as it is: no rules run, no
columns are compared, nothing is written but the mark that the record was seen.

`RULES_VERSION` is part of every digest: change it when a change to the rules' code makes
them write something else from the same record, so that the next sync rewrites every row.
"""

from __future__ import annotations

import functools
import hashlib
import operator
from collections.abc import Callable
from typing import Any

import attrs

#: Bump when the rules write differently from the same record and configuration.
RULES_VERSION = "1"


class Digester:
    """Digests of records under one set of rules (``context``: anything with a stable repr,
    typically settings objects, IDs and small lists read from the store)."""

    def __init__(self, *context: Any) -> None:
        self._base = hashlib.blake2b(digest_size=16)
        self._base.update(repr((RULES_VERSION, *context)).encode())

    def of(self, record: Any, *extra: Any) -> str:
        """The digest of ``record`` (an attrs record: every field's value, in order) and of
        ``extra``, under this digester's rules."""
        digest = self._base.copy()
        digest.update(repr((type(record).__name__, _values(type(record))(record))).encode())
        if extra:
            digest.update(repr(extra).encode())
        return digest.hexdigest()


@functools.cache
def _values(cls: type) -> Callable[[Any], tuple[Any, ...]]:
    """A getter of all the fields of the attrs class ``cls``, as a tuple."""
    names = [field.name for field in attrs.fields(cls)]
    getter = operator.attrgetter(*names)
    return getter if len(names) > 1 else lambda record: (getter(record),)


__all__ = ["RULES_VERSION", "Digester"]
