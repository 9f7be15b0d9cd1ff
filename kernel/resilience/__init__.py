"""Resilience policy: retries with backoff and circuit breakers, pure and
testable without trio. Public names are exported by `kernel`."""
