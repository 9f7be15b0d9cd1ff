"""Public names at their public path (trio's ``_util.fixup_module_metadata``).

The code lives in modules grouped by concept (``kernel/time/cron.py``); a
user imports it from a few public modules (``kernel``, ``kernel.ports``...).
Each public module calls `fixup_module_metadata` at its end, so that an
object's ``__module__`` names where a user finds it, not where it happens
to be defined: ``repr``, ``help()``, tracebacks and docs then show
``kernel.JobQueue``, and the code can move between modules without changing
what users see. ``tests/test_exports.py`` pins the names.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping

import attrs

__all__ = ["PUBLIC_MODULES", "fixup_module_metadata"]

PUBLIC_MODULES = frozenset(
    {
        "kernel",
        "kernel.bus.local",
        "kernel.errors",
        "kernel.notifier.log",
        "kernel.ports",
        "kernel.storage.base",
        "kernel.storage.memory",
        "kernel.storage.sqlite",
        "kernel.testing",
    }
)
"""Where users import from. A name defined in one of these keeps it as its
``__module__``; names defined elsewhere take the public module that exports
them (the first to, in import order)."""


def fixup_module_metadata(module_name: str, namespace: Mapping[str, object]) -> None:
    """Set ``__module__`` of each name in ``namespace["__all__"]`` defined in a
    non-public ``kernel`` module to ``module_name``.

    attrs classes have their string annotations resolved first, while the
    defining module's globals can still resolve them (cattrs looks them up
    through ``__module__``).
    """
    if module_name not in PUBLIC_MODULES:  # pragma: no cover - a wiring mistake
        raise AssertionError(f"{module_name} is not a public module")
    names = namespace.get("__all__", ())
    assert isinstance(names, list | tuple)
    for name in names:
        obj = namespace[name]
        defined_in = getattr(obj, "__module__", None)
        if (
            not isinstance(defined_in, str)
            or not defined_in.startswith("kernel.")
            or defined_in in PUBLIC_MODULES
        ):
            continue
        if isinstance(obj, type) and attrs.has(obj):
            with contextlib.suppress(NameError, TypeError):  # names only for typing
                attrs.resolve_types(obj)
        with contextlib.suppress(AttributeError, TypeError):  # constants, aliases
            obj.__module__ = module_name
