"""The ``memory://`` storage and the memory job store: gone when the process ends.

`MemoryStorage` (the key-value port, `kv`) and `MemoryJobStore` (the job
store, `jobs`, over the queued-job index of the private `_index`) keep every
rule of their contracts, so code tested against them behaves the same on
SQLite or PostgreSQL. Each method completes without yielding once past its
checkpoint, so each is atomic with respect to other trio tasks; there are no
threads.
"""

from kernel._exports import fixup_module_metadata
from kernel.storage.memory.jobs import MemoryJobStore
from kernel.storage.memory.kv import MemoryStorage, open_memory_storage, upgrade_memory_storage

__all__ = ["MemoryJobStore", "MemoryStorage", "open_memory_storage", "upgrade_memory_storage"]

fixup_module_metadata(__name__, globals())
