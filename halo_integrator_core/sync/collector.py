"""Fewer garbage collections while a sync runs.

CPython's cyclic collector runs a young-generation pass every 700 net new container
objects, and a full pass over every object the process holds every hundred of those.
A sync makes and drops records by the ten thousand (dicts, tuples, slotted records,
SQLAlchemy rows), nearly all freed by reference counting the moment they are done
with, so the passes find little: a default-size benchmark full sync (44,000 records)
spent 0.46 to 0.62 s of its 3 to 4.6 s of CPU in them, most of it in five full passes
over the imported modules (SQLAlchemy, attrs, the plugins), which never become garbage.

While a sync runs, `fewer_collections` moves what the process already holds out of the
collector's sight (`gc.freeze`) and lets the young generation grow to `YOUNG_THRESHOLD`
objects before a pass; the same sync then spends 18 to 31 ms in collections (six
interleaved pairs of runs, thread CPU timed by `gc.callbacks`). When the last sync
running in the process ends, the frozen objects go back to the oldest generation and the
thresholds to what they were, so a daemon's garbage between syncs is collected as before.
Garbage that does form cycles during a sync (an exception's traceback, say) is still
collected, only in fewer, larger passes: at most about `YOUNG_THRESHOLD` objects wait for
one.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

#: Net new container objects between two young-generation passes during a sync.
YOUNG_THRESHOLD = 50_000

_lock = threading.Lock()
_depth = 0
_saved: tuple[int, ...] = ()


@contextmanager
def fewer_collections() -> Iterator[None]:
    """Collect garbage seldom while the block runs (see the module's docstring).

    Syncs may overlap (the scheduler's jobs, a webhook's run): the first to enter tunes
    the collector and the last to leave restores it.
    """
    global _depth, _saved
    with _lock:
        if _depth == 0:
            _saved = gc.get_threshold()
            gc.freeze()
            # A threshold of 0 is the collector turned off: it stays off.
            young = max(YOUNG_THRESHOLD, _saved[0]) if _saved[0] else 0
            gc.set_threshold(young, *_saved[1:])
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                gc.set_threshold(*_saved)
                gc.unfreeze()


__all__ = ["YOUNG_THRESHOLD", "fewer_collections"]
