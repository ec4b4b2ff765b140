"""Where a unit's fetched batches wait for their turn to be written.

When tenants are synced side by side, each unit fetches everything first and writes after,
so that a unit never holds the store while Microsoft answers (SQLite has one writer at a
time; a unit holding it through a throttled listing would stall every other tenant). The
first batches wait in memory; past `MEMORY_RECORDS` the rest are pickled to an anonymous
temporary file, so memory stays the same whatever the size of the directory.

A spilled batch is pickled by columns: each run of records of one of the core's record
types goes as the class once and a tuple of field values per record, and comes back
through the class's slots, as attrs' own unpickling does it (no ``__init__``, no
converters). attrs' per-record state dicts cost about twice as much to write and read,
and the users past the first thousand of each tenant are spilled in every sync.
"""

from __future__ import annotations

import inspect
import operator
import pickle
import tempfile
import types
from collections.abc import Callable, Iterator
from typing import IO, Any

import attrs

from .. import models

#: Records a spool holds in memory before it spills to disk (per unit being fetched).
MEMORY_RECORDS = 1000


@attrs.frozen
class Unspoolable:
    """Stands in for an item the plugin yielded that cannot be pickled (it is reported as
    a bad item either way: records are plain data)."""

    type_name: str


class Spool:
    """Batches in, the same batches out, in order; iterate once."""

    def __init__(self, memory_records: int = MEMORY_RECORDS) -> None:
        self.memory_records = memory_records
        self._memory: list[list[Any]] = []
        self._held = 0
        self._file: IO[bytes] | None = None
        self._spilled = 0

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self._memory = []
        if self._file is not None:
            self._file.close()
            self._file = None

    def add(self, batch: list[Any]) -> None:
        if self._file is None and self._held + len(batch) <= self.memory_records:
            self._memory.append(batch)
            self._held += len(batch)
            return
        if self._file is None:
            # Unnamed on POSIX: nothing is left behind, even after a SIGKILL.
            self._file = tempfile.TemporaryFile(prefix="halo-spool-")  # noqa: SIM115 - closed by close()
        try:
            data = pickle.dumps(_columns(batch), protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:
            batch = [_spoolable(item) for item in batch]
            data = pickle.dumps(_columns(batch), protocol=pickle.HIGHEST_PROTOCOL)
        self._file.write(data)
        self._spilled += 1

    def __iter__(self) -> Iterator[list[Any]]:
        memory, self._memory = self._memory, []
        yield from memory
        if self._file is None:
            return
        self._file.seek(0)
        for _ in range(self._spilled):
            yield _rows(pickle.load(self._file))


@attrs.frozen
class _Layout:
    """How a slotted attrs class's records are taken apart and put back together."""

    cls: type
    values: Callable[[Any], tuple[Any, ...]]
    #: A record from its values: straight-line code setting each slot in turn (a loop over
    #: the slots' setters took twice as long, a sixth of an unchanged sync's spooling).
    build: Callable[[tuple[Any, ...]], Any]


def _builder(cls: type, slots: list[Any]) -> Callable[[tuple[Any, ...]], Any]:
    names: dict[str, Any] = {"new": object.__new__, "cls": cls}
    lines = ["def build(values):", "    record = new(cls)"]
    for index, slot in enumerate(slots):
        names[f"set{index}"] = slot.__set__
        lines.append(f"    set{index}(record, values[{index}])")
    lines.append("    return record")
    exec(compile("\n".join(lines), f"<spool build of {cls.__qualname__}>", "exec"), names)
    return names["build"]  # type: ignore[no-any-return]


_layouts: dict[type, _Layout | None] = {}


def _layout(cls: type) -> _Layout | None:
    """The layout of one of the core's record types (`halo_integrator_core.models`, all
    slotted attrs classes); None for anything else, which is pickled whole (a class of
    another module may pickle itself its own way)."""
    try:
        return _layouts[cls]
    except KeyError:
        pass
    layout = None
    if cls.__module__ == models.__name__ and attrs.has(cls):
        names = [field.name for field in attrs.fields(cls)]
        slots = [inspect.getattr_static(cls, name, None) for name in names]
        if names and all(isinstance(slot, types.MemberDescriptorType) for slot in slots):
            getter = operator.attrgetter(*names)
            values = getter if len(names) > 1 else lambda record: (getter(record),)
            layout = _Layout(cls, values, _builder(cls, slots))
    _layouts[cls] = layout
    return layout


def _columns(batch: list[Any]) -> list[tuple[type | None, Any]]:
    """``batch`` as runs: ``(class, [values, ...])`` for consecutive records of one record
    type, ``(None, item)`` for any other item."""
    out: list[tuple[type | None, Any]] = []
    current: type | None = None
    rows: list[tuple[Any, ...]] = []
    for item in batch:
        cls = type(item)
        if cls is not current:
            layout = _layout(cls)
            if layout is None:
                out.append((None, item))
                current = None
                continue
            current, rows = cls, []
            out.append((cls, rows))
        rows.append(layout.values(item))  # type: ignore[union-attr]
    return out


def _rows(columns: list[tuple[type | None, Any]]) -> list[Any]:
    """The batch `_columns` took apart."""
    batch: list[Any] = []
    for cls, payload in columns:
        if cls is None:
            batch.append(payload)
        else:
            batch += map(_layout(cls).build, payload)  # type: ignore[union-attr]
    return batch


def _spoolable(item: Any) -> Any:
    try:
        pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        return Unspoolable(type(item).__name__)
    return item


__all__ = ["MEMORY_RECORDS", "Spool", "Unspoolable"]
