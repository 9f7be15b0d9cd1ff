"""Notifications to people for trio-kernel, through Apprise.

`open_notifier` (entry point ``apprise`` in group ``kernel.notifier``)
opens every ``apprise+<service>://`` URL: the part after ``apprise+`` is an
Apprise URL (``apprise+slack://T/B/C``, ``apprise+mailto://user:pw@host``,
``apprise+json://host:8000/hook``, ``apprise+ntfy://topic``), plus the
kernel's options ``kernel_timeout``, ``kernel_format`` and
``kernel_context`` (`parse_apprise_url`).
"""

from __future__ import annotations

from kernel_apprise._url import AppriseOptions, parse_apprise_url
from kernel_apprise.notifier import AppriseNotifier, footer, open_notifier, split_footer

__all__ = [
    "AppriseNotifier",
    "AppriseOptions",
    "footer",
    "open_notifier",
    "parse_apprise_url",
    "split_footer",
]

__version__ = "0.1.0.dev0"
