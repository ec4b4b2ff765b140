"""The garbage collector's tuning around a sync (`halo_integrator_core.sync.collector`)."""

from __future__ import annotations

import gc
import threading
import weakref

import pytest

from halo_integrator_core.sync.collector import YOUNG_THRESHOLD, fewer_collections


@pytest.fixture(autouse=True)
def default_thresholds():
    saved = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    yield
    gc.set_threshold(*saved)


def test_the_block_collects_seldom_and_leaves_the_collector_as_it_found_it():
    assert gc.get_freeze_count() == 0
    with fewer_collections():
        assert gc.get_threshold() == (YOUNG_THRESHOLD, 10, 10)
        assert gc.get_freeze_count() > 0  # what the process held is out of the passes' sight
    assert gc.get_threshold() == (700, 10, 10)
    assert gc.get_freeze_count() == 0


def test_a_failing_block_restores_the_collector_too():
    with pytest.raises(RuntimeError), fewer_collections():
        raise RuntimeError("the sync failed")
    assert gc.get_threshold() == (700, 10, 10)
    assert gc.get_freeze_count() == 0


def test_overlapping_blocks_restore_when_the_last_one_ends():
    first_in, release_first = threading.Event(), threading.Event()

    def first() -> None:
        with fewer_collections():
            first_in.set()
            release_first.wait(10)

    thread = threading.Thread(target=first)
    thread.start()
    try:
        assert first_in.wait(10)
        with fewer_collections():
            pass
        # The second block has ended, the first has not: the collector stays tuned for it.
        assert gc.get_threshold() == (YOUNG_THRESHOLD, 10, 10)
        assert gc.get_freeze_count() > 0
    finally:
        release_first.set()
        thread.join(10)
    assert gc.get_threshold() == (700, 10, 10)
    assert gc.get_freeze_count() == 0


def test_a_collector_turned_off_stays_off_and_a_higher_threshold_is_kept():
    gc.set_threshold(0, 10, 10)
    with fewer_collections():
        assert gc.get_threshold() == (0, 10, 10)
    gc.set_threshold(200_000, 10, 10)
    with fewer_collections():
        assert gc.get_threshold() == (200_000, 10, 10)
    assert gc.get_threshold() == (200_000, 10, 10)


def test_cycles_made_during_the_block_are_still_collected_by_the_automatic_passes():
    class Node:
        pass

    collected = threading.Event()
    with fewer_collections():
        node = Node()
        node.self = node  # a cycle: reference counting alone never frees it
        weakref.finalize(node, collected.set)
        del node
        kept = [[] for _ in range(2 * YOUNG_THRESHOLD)]  # new objects: a young pass is due
        assert collected.is_set()
        del kept
