"""Benchmarks (loopback only, bounded in time). ``python -m bench.replica_bench`` for the replica."""

# The per-frame rate limit stays on in the stacks the benches start (its cost is part of every frame), with a
# budget no bench reaches: all bench clients share one address, 127.0.0.1.
FRAME_BUDGET_PER_MINUTE = str(10**9)
