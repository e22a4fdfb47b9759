"""Benchmarks for issue 6 (performance). Run them all with `bench/run [--quick]`."""
