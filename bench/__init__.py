"""Benchmarks (loopback only, bounded in time). ``python -m bench.replica_bench`` for the replica."""
