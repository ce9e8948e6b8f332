"""Placeholder until the demo lands."""

print("demo: not yet built")
