"""Where a unit's fetched batches wait for their turn to be written.

When tenants are synced side by side, each unit fetches everything first and writes after,
so that a unit never holds the store while Microsoft answers (SQLite has one writer at a
time; a unit holding it through a throttled listing would stall every other tenant). The
first batches wait in memory; past `MEMORY_RECORDS` the rest are pickled to an anonymous
temporary file, so memory stays the same whatever the size of the directory.
"""

from __future__ import annotations

import pickle
import tempfile
from collections.abc import Iterator
from typing import IO, Any

import attrs

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
            data = pickle.dumps(batch, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:
            data = pickle.dumps([_spoolable(item) for item in batch], pickle.HIGHEST_PROTOCOL)
        self._file.write(data)
        self._spilled += 1

    def __iter__(self) -> Iterator[list[Any]]:
        memory, self._memory = self._memory, []
        yield from memory
        if self._file is None:
            return
        self._file.seek(0)
        for _ in range(self._spilled):
            yield pickle.load(self._file)


def _spoolable(item: Any) -> Any:
    try:
        pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        return Unspoolable(type(item).__name__)
    return item


__all__ = ["MEMORY_RECORDS", "Spool", "Unspoolable"]
