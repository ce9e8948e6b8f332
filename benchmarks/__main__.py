"""Placeholder until the benchmarks land."""

print("benchmarks: not yet built")
