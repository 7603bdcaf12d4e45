"""Fixed-window rate limits: one shared count per window, whichever process counts, and a window key this
process created is not created again on every hit."""

from __future__ import annotations

from django.core.cache import cache

from hypertuna import ratelimit


def test_counts_up_to_the_limit_then_refuses_with_the_rest_of_the_window(monkeypatch):
    monkeypatch.setattr(ratelimit.time, "time", lambda: 1_000_000_010)
    decisions = [ratelimit.hit("t-frames", "a", limit=3, window=60) for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert decisions[-1].retry_after == 10  # the window started at ...9960 and ends at ...10020
    assert ratelimit.hit("t-frames", "b", limit=3, window=60).allowed  # another identity, its own budget


def test_a_window_is_created_once_per_process(monkeypatch):
    monkeypatch.setattr(ratelimit.time, "time", lambda: 2_000_000_000)
    adds = []
    real_add = cache.add
    monkeypatch.setattr(cache, "add", lambda *a, **k: adds.append(a[0]) or real_add(*a, **k))
    for _ in range(5):
        ratelimit.hit("t-once", "a", limit=10, window=60)
    assert len(adds) == 1


def test_a_window_that_vanished_from_the_cache_starts_again_at_one(monkeypatch):
    monkeypatch.setattr(ratelimit.time, "time", lambda: 3_000_000_000)
    for _ in range(3):
        ratelimit.hit("t-gone", "a", limit=3, window=60)
    cache.delete(f"rl:t-gone:a:{3_000_000_000 - 3_000_000_000 % 60}")  # evicted, or the cache restarted
    assert ratelimit.hit("t-gone", "a", limit=3, window=60).allowed
    assert ratelimit.hit("t-gone", "a", limit=3, window=60).allowed
    assert ratelimit.hit("t-gone", "a", limit=3, window=60).allowed
    assert not ratelimit.hit("t-gone", "a", limit=3, window=60).allowed
