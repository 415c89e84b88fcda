"""Benchmarks: `make bench` (or `python -m benchmarks.run [--quick]`) prints one table."""
