"""Benchmarks and soak runs: not part of the test suite (`make bench`, `make soak`)."""
