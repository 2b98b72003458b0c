"""Benchmarks (not tests): `python -m bench.engine`, `bench.overhead`, `bench.data`, `bench.memory`."""
