"""Benchmarks of biogpt against transformers on the same weights (`python -m bench.run`; never part of the tests)."""
