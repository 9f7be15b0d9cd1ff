"""PostgreSQL for trio-kernel: one database, many kernel nodes.

- `open_storage` (entry point ``kernel.storage``, schemes ``postgresql`` and
  ``postgres``): `PostgresStorage`, the key-value `kernel.ports.Storage`
  and the `kernel.jobs.record.JobStore` in one, with LISTEN/NOTIFY wake-ups;
- `open_bus` (entry point ``kernel.bus``): `PostgresBus`, publish/subscribe
  over LISTEN/NOTIFY;
- `upgrade` (entry point ``kernel.migrate``): the schema migrations behind
  ``kernel db upgrade URL``.

URLs are libpq's plus the kernel's options (`parse_postgres_url`)::

    postgresql://app:secret@db.internal:5432/jobs?schema=kernel&pool_size=20
"""

from __future__ import annotations

from kernel_postgres._url import PostgresOptions, parse_postgres_url
from kernel_postgres.bus import MessageTooLarge, PostgresBus, PostgresSubscription, open_bus
from kernel_postgres.schema import MIGRATIONS, SCHEMA_VERSION, Migration, upgrade
from kernel_postgres.storage import PostgresStorage, open_storage

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "MessageTooLarge",
    "Migration",
    "PostgresBus",
    "PostgresOptions",
    "PostgresStorage",
    "PostgresSubscription",
    "open_bus",
    "open_storage",
    "parse_postgres_url",
    "upgrade",
]

__version__ = "0.1.0.dev0"
