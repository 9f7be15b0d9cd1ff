"""``apprise+<service>://...`` URLs: the Apprise URL inside, the kernel's own
options beside it, and how the URL is shown without its secrets.

The part after ``apprise+`` is handed to Apprise as written (its own
``?options`` included), except the options named ``kernel_*``, which are
ours. Apprise URLs put secrets anywhere (Slack's tokens in the path, a
webhook's header values in the query), so a URL is shown as Apprise's own
privacy form (``url(privacy=True)``) without its query: ``apprise+slack://
T...2/A...D/T...Q/``, ``apprise+json://user:****@host:8000/hook``.
"""

from __future__ import annotations

import math
import re

import attrs

from kernel.errors import InvalidAdapterURL

__all__ = ["AppriseOptions", "parse_apprise_url", "scheme_only"]

PREFIX = "apprise+"
_SCHEME = re.compile(r"apprise\+([A-Za-z][A-Za-z0-9+.-]*)://", re.IGNORECASE)
_OPTIONS = ("kernel_timeout", "kernel_format", "kernel_context")
_FORMATS = ("text", "markdown")
_BOOLEANS = {"yes": True, "true": True, "1": True, "no": False, "false": False, "0": False}


@attrs.frozen
class AppriseOptions:
    """What a URL asks of the adapter: the Apprise URL, the seconds one
    delivery may take (``kernel_timeout``, default 20), whether the message
    is plain text or Markdown (``kernel_format``), and whether the
    notification's context goes along as a footer (``kernel_context``)."""

    apprise_url: str = attrs.field(repr=False)
    timeout: float = 20.0
    body_format: str = "text"
    context: bool = True


def scheme_only(url: str) -> str:
    """``url`` shown as its scheme alone (``apprise+slack://…``): safe to
    print before Apprise has said which parts are secret."""
    match = _SCHEME.match(url)
    return f"{match.group(0)}…" if match else "apprise+…"


def parse_apprise_url(url: str) -> AppriseOptions:
    """Split ``apprise+<service>://...`` into the Apprise URL and our
    options; `InvalidAdapterURL` (showing the scheme only) if it is not one."""
    shown = scheme_only(url)
    if not isinstance(url, str) or _SCHEME.match(url) is None:
        raise InvalidAdapterURL(
            shown, "expected apprise+<service>://..., e.g. apprise+ntfy://topic"
        )
    inner = url[len(PREFIX) :]
    head, question, query = inner.partition("?")
    kept: list[str] = []
    found: dict[str, str] = {}
    for pair in query.split("&") if question else []:
        name, _, value = pair.partition("=")
        if name in _OPTIONS:
            if name in found:
                raise InvalidAdapterURL(shown, f"option {name!r} is given twice")
            found[name] = value
        elif pair:
            kept.append(pair)
    apprise_url = head + ("?" + "&".join(kept) if kept else "")
    options = AppriseOptions(apprise_url)
    if "kernel_timeout" in found:
        try:
            timeout = float(found["kernel_timeout"])
        except ValueError:
            timeout = math.nan
        if not math.isfinite(timeout) or timeout <= 0:
            raise InvalidAdapterURL(
                shown, f"kernel_timeout must be seconds > 0, not {found['kernel_timeout']!r}"
            )
        options = attrs.evolve(options, timeout=timeout)
    if "kernel_format" in found:
        body_format = found["kernel_format"].lower()
        if body_format not in _FORMATS:
            raise InvalidAdapterURL(
                shown, f"kernel_format must be text or markdown, not {found['kernel_format']!r}"
            )
        options = attrs.evolve(options, body_format=body_format)
    if "kernel_context" in found:
        context = _BOOLEANS.get(found["kernel_context"].lower())
        if context is None:
            raise InvalidAdapterURL(
                shown, f"kernel_context must be yes or no, not {found['kernel_context']!r}"
            )
        options = attrs.evolve(options, context=context)
    return options
