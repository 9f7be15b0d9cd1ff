"""What users and adapter authors need to test against the kernel.

The contract suites check that an adapter keeps every rule of its port
(`kernel.ports`): subclass one in your test module and provide the adapter
as a fixture (``docs/ports.md`` has a runnable example)::

    from kernel.testing import StorageContract

    class TestMyStorage(StorageContract):
        @pytest.fixture
        async def storage(self):
            storage = await open_storage("mine://")
            yield storage
            await storage.aclose()

The suites need pytest and pytest-trio; they are imported on first use, so
``import kernel.testing`` itself does not import pytest. `RecordingNotifier`
keeps what a plugin (or the kernel) notified, for assertions.
"""

from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING

from kernel._exports import fixup_module_metadata
from kernel.testing.recording import RecordingNotifier

if TYPE_CHECKING:
    from kernel.testing.bus_contract import BusContract
    from kernel.testing.jobstore_contract import JobStoreContract
    from kernel.testing.notifier_contract import NotifierContract
    from kernel.testing.shared_jobstore_contract import SharedJobStoreContract
    from kernel.testing.storage_contract import StorageContract

__all__ = [
    "BusContract",
    "JobStoreContract",
    "NotifierContract",
    "RecordingNotifier",
    "SharedJobStoreContract",
    "StorageContract",
]

_LAZY = {
    "BusContract": "kernel.testing.bus_contract",
    "JobStoreContract": "kernel.testing.jobstore_contract",
    "NotifierContract": "kernel.testing.notifier_contract",
    "SharedJobStoreContract": "kernel.testing.shared_jobstore_contract",
    "StorageContract": "kernel.testing.storage_contract",
}

if "pytest" in sys.modules:
    # Under pytest, have the contract modules' asserts rewritten (they are not
    # test files, so pytest would not do it on its own), so that a failing
    # contract test explains itself. Only modules not yet imported qualify.
    _REWRITE = {
        *_LAZY.values(),
        "kernel.testing._jobstore_base",
        "kernel.testing._jobstore_lifecycle",
        "kernel.testing._jobstore_queue",
        "kernel.testing.cluster",
    }
    _pending = sorted(module for module in _REWRITE if module not in sys.modules)
    if _pending:
        sys.modules["pytest"].register_assert_rewrite(*_pending)

fixup_module_metadata(__name__, {**globals(), "__all__": ["RecordingNotifier"]})


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    fixup_module_metadata(__name__, {"__all__": [name], name: value})
    return value
