"""The per-frame rate limit: counted in memory on the frame path, shared between nodes (here: two limiters on
one cache) in batches, never over budget by more than the other nodes let through since the last sync."""

from __future__ import annotations

import threading
from unittest import mock

from django.core.cache import cache

from relays.frame_limit import FrameLimiter

T0 = 1_800_000_020.0  # 20 s into a 60 s window (1_800_000_000 is a multiple of 60)
WINDOW_START = 1_800_000_000


def test_a_budget_holds_within_the_window_and_the_next_window_starts_afresh():
    limiter = FrameLimiter()
    assert all(limiter.hit("token:1", 3, now=T0).allowed for _ in range(3))
    refused = limiter.hit("token:1", 3, now=T0)
    assert not refused.allowed and refused.retry_after == 40  # until the window ends
    assert limiter.hit("token:2", 3, now=T0).allowed  # another identity has its own budget
    assert limiter.hit("token:1", 3, now=T0 + 40).allowed  # next window


def test_no_limit_counts_nothing():
    limiter = FrameLimiter()
    assert all(limiter.hit("token:1", 0, now=T0).allowed for _ in range(1000))
    assert limiter.sync(now=T0) == 0


def test_two_nodes_share_one_budget_after_a_sync():
    node_a, node_b = FrameLimiter(), FrameLimiter()
    for _ in range(3):
        assert node_a.hit("token:7", 5, now=T0).allowed
    for _ in range(2):
        assert node_b.hit("token:7", 5, now=T0).allowed
    assert node_a.sync(now=T0) == 1 and node_b.sync(now=T0) == 1
    assert cache.get(node_a.key("token:7", WINDOW_START)) == 5
    # Node A had no new hits, yet its next sync reads what node B spent: the budget is gone on both.
    node_a.sync(now=T0)
    assert not node_a.hit("token:7", 5, now=T0).allowed
    assert not node_b.hit("token:7", 5, now=T0).allowed


def test_between_syncs_the_overrun_is_what_the_other_node_let_through():
    node_a, node_b = FrameLimiter(), FrameLimiter()
    limit = 10
    allowed_b = sum(node_b.hit("ip:203.0.113.9", limit, now=T0).allowed for _ in range(limit))
    # Node A has not synced since node B spent its budget: it lets through at most its own view of it.
    allowed_a = sum(node_a.hit("ip:203.0.113.9", limit, now=T0).allowed for _ in range(2 * limit))
    assert allowed_b == limit and allowed_a == limit
    node_b.sync(now=T0)
    node_a.sync(now=T0)
    assert cache.get(node_a.key("ip:203.0.113.9", WINDOW_START)) == 3 * limit  # every frame is counted
    assert not node_a.hit("ip:203.0.113.9", limit, now=T0).allowed
    assert not node_b.hit("ip:203.0.113.9", limit, now=T0).allowed


def test_an_unreachable_cache_keeps_the_local_limit_and_the_backlog():
    limiter = FrameLimiter()
    for _ in range(4):
        limiter.hit("token:3", 5, now=T0)
    with mock.patch("relays.frame_limit.cache.add", side_effect=ConnectionError("redis down")):
        assert limiter.sync(now=T0) == 0
    assert limiter.hit("token:3", 5, now=T0).allowed
    assert not limiter.hit("token:3", 5, now=T0).allowed  # still limited on this node's own count
    assert limiter.sync(now=T0) == 1  # back: the whole backlog reaches the shared total
    assert cache.get(limiter.key("token:3", WINDOW_START)) == 6


def test_ended_windows_are_forgotten_at_the_next_sync():
    limiter = FrameLimiter()
    for n in range(50):
        limiter.hit(f"token:{n}", 5, now=T0)
    limiter.sync(now=T0 + 60)
    assert limiter._windows == {}


def test_concurrent_hits_and_syncs_count_every_frame_once():
    limiter, threads = FrameLimiter(), 8
    per_thread = 500
    go = threading.Event()

    def spend() -> None:
        go.wait()
        for _ in range(per_thread):
            limiter.hit("token:9", 10**9, now=T0)

    workers = [threading.Thread(target=spend) for _ in range(threads)]
    for worker in workers:
        worker.start()
    go.set()
    while any(worker.is_alive() for worker in workers):
        limiter.sync(now=T0)
    for worker in workers:
        worker.join()
    limiter.sync(now=T0)
    assert cache.get(limiter.key("token:9", WINDOW_START)) == threads * per_thread
    assert limiter._windows["token:9"].pending == 0


def test_a_node_primed_with_the_shared_total_counts_what_others_let_through_at_once():
    node_a, node_b = FrameLimiter(), FrameLimiter()
    for _ in range(8):
        node_a.hit("token:4", 10, now=T0)
    node_a.sync(now=T0)
    assert not node_b.known("token:4", now=T0)
    node_b.prime("token:4", now=T0)
    assert node_b.known("token:4", now=T0) and not node_b.known("token:4", now=T0 + 60)
    assert [node_b.hit("token:4", 10, now=T0).allowed for _ in range(3)] == [True, True, False]


def test_priming_with_the_cache_down_starts_from_zero():
    limiter = FrameLimiter()
    with mock.patch("relays.frame_limit.cache.get", side_effect=ConnectionError("redis down")):
        limiter.prime("token:5", now=T0)
    assert limiter.known("token:5", now=T0) and limiter.hit("token:5", 1, now=T0).allowed
