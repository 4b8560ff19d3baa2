"""Benchmark cases, one module per family."""
