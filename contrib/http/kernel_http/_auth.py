"""Who may read and who may act: the bearer token, the dashboard session, CSRF.

Actions (every ``POST``) need ``Authorization: Bearer <token>``, compared
in constant time (`hmac.compare_digest`): 401 without credentials, 403
with a wrong token or when no token is configured (actions are then off).
Reads are open when the server listens on loopback; elsewhere they need
the token too.

The dashboard asks for the token once (``POST /ui/login``, JSON) and keeps
only the fact that it was given in its session: a cookie signed by
Starlette's ``SessionMiddleware`` with a key made at start, ``HttpOnly`` and
``SameSite=Strict``; the token itself is never stored in the browser. A
session acts through the same API, with the session's CSRF token in an
``X-CSRF-Token`` header (the synchronizer-token pattern OWASP describes); a
cross-site page can neither read that token nor send the header without a
CORS preflight the server never grants.
"""

from __future__ import annotations

import hmac
import secrets
from typing import Final

import attrs
from starlette.requests import Request
from starlette.responses import JSONResponse

__all__ = ["CSRF_HEADER", "Guard", "problem"]

CSRF_HEADER: Final = "x-csrf-token"


def problem(status: int, code: str, message: str, **headers: str) -> JSONResponse:
    """The API's error body: ``{"error": {"code", "message"}}``."""
    return JSONResponse(
        {"error": {"code": code, "message": message}}, status_code=status, headers=headers
    )


@attrs.frozen
class Guard:
    """The access rules of one server (see the module docstring)."""

    token: str | None = attrs.field(repr=False)
    open_reads: bool

    def matches(self, presented: str) -> bool:
        """Whether ``presented`` is the token (constant time; False with none set)."""
        if self.token is None:
            return False
        return hmac.compare_digest(presented.encode(), self.token.encode())

    def signed_in(self, request: Request) -> bool:
        return self.token is not None and request.session.get("auth") is True

    def login(self, request: Request) -> str:
        """Mark the session as holding the token; its CSRF token."""
        request.session.clear()
        csrf = secrets.token_urlsafe(32)
        request.session.update({"auth": True, "csrf": csrf})
        return csrf

    def csrf_token(self, request: Request) -> str | None:
        value = request.session.get("csrf")
        return value if isinstance(value, str) else None

    def _bearer(self, request: Request) -> tuple[bool, JSONResponse | None]:
        """(credentials given, refusal): a bearer header is judged here."""
        header = request.headers.get("authorization")
        if header is None:
            return False, None
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            return True, problem(
                401,
                "unauthorized",
                "expected 'Authorization: Bearer <token>'",
                **{"WWW-Authenticate": "Bearer"},
            )
        if not self.matches(value.strip()):
            return True, problem(403, "forbidden", "wrong token")
        return True, None

    def refuse_read(self, request: Request) -> JSONResponse | None:
        """None if ``request`` may read, else the refusal."""
        if self.open_reads:
            return None
        given, refusal = self._bearer(request)
        if given:
            return refusal
        if self.signed_in(request):
            return None
        return problem(
            401, "unauthorized", "reads need the token here", **{"WWW-Authenticate": "Bearer"}
        )

    def refuse_action(self, request: Request) -> JSONResponse | None:
        """None if ``request`` may act, else the refusal."""
        if self.token is None:
            return problem(403, "forbidden", "actions are off: no [http] token is configured")
        given, refusal = self._bearer(request)
        if given:
            return refusal
        if self.signed_in(request):
            expected = self.csrf_token(request)
            presented = request.headers.get(CSRF_HEADER, "")
            if expected is None or not hmac.compare_digest(presented.encode(), expected.encode()):
                return problem(403, "csrf", "missing or wrong X-CSRF-Token")
            return None
        return problem(
            401, "unauthorized", "actions need the token", **{"WWW-Authenticate": "Bearer"}
        )
