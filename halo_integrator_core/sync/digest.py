"""Digests of what a row was written from, so that an unchanged record costs a comparison.

A user's or an asset's row is a function of its record (what the plugin yielded) and of the
rules that turn records into rows: the configuration, and what of the store those rules
read (the tenant's customer and sites, its licences, its users for the devices' owners).
The digest of a record is taken over both; the engine stores it with the row, and when the
next sync fetches a record of the same digest the row is left as it is: no rules run, no
columns are compared, nothing is written but the mark that the record was seen.

`RULES_VERSION` is part of every digest: change it when a change to the rules' code makes
them write something else from the same record, so that the next sync rewrites every row.
A change to how a record is encoded for its digest (`_encoder`) changes every digest too:
the next sync then takes every record through the rules once and stores its new digest.
"""

from __future__ import annotations

import functools
import hashlib
import marshal
import operator
import typing
from collections.abc import Callable
from datetime import datetime
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
        digest.update(_encoder(type(record))(record))
        if extra:
            digest.update(repr(extra).encode())
        return digest.hexdigest()


@functools.cache
def _encoder(cls: type) -> Callable[[Any], bytes]:
    """The bytes a record of the attrs class ``cls`` is digested from: its class name and
    every field's value, in order, written by `marshal` (format 2, which refers back to no
    object, so equal values give equal bytes), a timestamp as its instant and its UTC
    offset. That takes about two thirds of the time of ``repr``, which the writer paid for
    every record of every sync. A record holding a value `marshal` cannot write (a plugin's
    own type, a decimal) is encoded by ``repr`` instead: the same record always the same
    way."""
    fields = attrs.fields(cls)
    names = [field.name for field in fields]
    getter = operator.attrgetter(*names)
    values_of = getter if len(names) > 1 else lambda record: (getter(record),)
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # an annotation that does not resolve: its values go by repr
        hints = {}
    timestamps = [i for i, name in enumerate(names) if _holds_datetime(hints.get(name))]
    tag = cls.__qualname__

    def encode(record: Any) -> bytes:
        values = values_of(record)
        if timestamps:
            values = list(values)
            for i in timestamps:
                value = values[i]
                if isinstance(value, datetime):
                    offset = value.utcoffset()
                    seconds = None if offset is None else offset.total_seconds()
                    values[i] = ("datetime", value.timestamp(), seconds)
        try:
            return marshal.dumps((tag, *values), 2)
        except ValueError:
            return repr((tag, *values)).encode()

    return encode


def _holds_datetime(hint: Any) -> bool:
    return hint is datetime or datetime in typing.get_args(hint)


__all__ = ["RULES_VERSION", "Digester"]
