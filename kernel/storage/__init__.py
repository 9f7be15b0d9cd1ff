"""The built-in storage adapters (memory, SQLite) and `kernel.storage.base`,
what every store shares."""
