"""The ``sqlite://`` storage: the durable embedded default, on stdlib sqlite3.

`SQLiteStorage` keeps the key-value state and the jobs of a kernel in one
file (WAL). The code is split as the PostgreSQL adapter's is: private URL
parsing (``_url``) and thread-side SQL (``_sql``), the public `schema`
(migrations) and `storage`.
"""

from kernel._exports import fixup_module_metadata
from kernel.storage.sqlite._url import MEMORY, SQLiteOptions, Synchronous, parse_sqlite_url
from kernel.storage.sqlite.schema import MIGRATIONS, SCHEMA_VERSION, Migration
from kernel.storage.sqlite.storage import (
    SQLiteStorage,
    open_sqlite_storage,
    upgrade_sqlite_storage,
)

__all__ = [
    "MEMORY",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "Migration",
    "SQLiteOptions",
    "SQLiteStorage",
    "Synchronous",
    "open_sqlite_storage",
    "parse_sqlite_url",
    "upgrade_sqlite_storage",
]

fixup_module_metadata(__name__, globals())
