"""Runnable example plugins that mirror real background services.

Each module holds one `kernel.Plugin` with its attrs config class and an
in-memory stand-in for the external system it would talk to; each has a
config file beside it (``kernel run examples/data_sync.toml``). See
``docs/examples.md``.
"""
