"""Serving benchmarks: HTTP load, catalogue scale, faults, hostile input and soak (docs/BENCHMARKS-serving.md)."""
