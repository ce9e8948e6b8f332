"""Benchmarks against the peer libraries (`make bench`)."""
