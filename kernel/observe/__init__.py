"""Observing a running kernel: health checks and metrics. Public names are
exported by `kernel`."""
