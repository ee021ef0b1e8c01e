"""Benchmarks of the project, run from a checkout: `python -m benchmarks.round_time`."""
