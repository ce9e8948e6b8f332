"""The demo: a flaky loopback service called bare and through resilience (`make demo`)."""
