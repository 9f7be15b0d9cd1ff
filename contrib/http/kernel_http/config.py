"""The ``[http]`` table: where to listen and the token that guards actions.

::

    [http]
    listen = "127.0.0.1:8080"      # the default: loopback only
    token_file = "/run/secrets/kernel-http"   # or token = "...", or token_env = "KERNEL_HTTP_TOKEN"

Loopback is the default, as for Prometheus exporters and Flower: reads
(probes, metrics, the API's GETs, the dashboard) are open there, and
actions need the token. Listening anywhere else needs a token, which then
guards reads as well, and is logged as a warning. The token may be given
inline, in a file (first line, as Kubernetes mounts secrets) or in an
environment variable; it is never logged or shown.
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Any

import attrs

from kernel.errors import ConfigError

__all__ = ["HttpConfig", "Listen", "parse_listen"]

_HOST_PORT = re.compile(
    r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9.-]+)):(?P<port>\d{1,5})"
)
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
MIN_TOKEN_LENGTH = 16


@attrs.frozen
class Listen:
    """A parsed ``listen`` address: ``host`` (an IPv6 address without its
    brackets), ``port`` (0: any free port) and whether it is loopback."""

    host: str
    port: int

    @property
    def loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    @property
    def bind(self) -> str:
        """As Hypercorn's ``bind`` spells it."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_listen(text: object) -> Listen:
    """``"127.0.0.1:8080"``, ``"[::1]:8080"``, ``"0.0.0.0:80"`` or
    ``"localhost:0"``; `ValueError` naming what is wrong otherwise."""
    if not isinstance(text, str):
        raise ValueError(f"expected 'host:port' as a string, got {type(text).__name__}")
    match = _HOST_PORT.fullmatch(text)
    if match is None:
        raise ValueError(
            f"expected 'host:port' such as '127.0.0.1:8080' or '[::1]:8080', got {text!r}"
        )
    port = int(match["port"])
    if port > 65535:
        raise ValueError(f"port {port} is out of range (0-65535) in {text!r}")
    host = match["v6"] or match["host"]
    if match["v6"]:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address in {text!r}") from None
    return Listen(host, port)


def _check_listen(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    parse_listen(value)


def _check_token(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is None:
        return
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {type(value).__name__}")
    if len(value.strip()) < MIN_TOKEN_LENGTH:
        raise ValueError(f"a token needs at least {MIN_TOKEN_LENGTH} characters")


def _check_env(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and (not isinstance(value, str) or not _ENV_NAME.fullmatch(value)):
        raise ValueError("expected an environment variable name such as 'KERNEL_HTTP_TOKEN'")


@attrs.frozen
class HttpConfig:
    """The ``[http]`` table (see the module docstring). At most one of
    ``token``, ``token_file`` and ``token_env``."""

    listen: str = attrs.field(default="127.0.0.1:8080", validator=_check_listen)
    token: str | None = attrs.field(default=None, repr=False, validator=_check_token)
    token_file: Path | None = None
    token_env: str | None = attrs.field(default=None, validator=_check_env)

    def __attrs_post_init__(self) -> None:
        given = [n for n in ("token", "token_file", "token_env") if getattr(self, n) is not None]
        if len(given) > 1:
            raise ValueError(f"give one of token, token_file and token_env, not {given}")
        if not self.address.loopback and not given:
            raise ValueError(
                f"listening on {self.listen} (beyond loopback) needs a token: "
                "set token, token_file or token_env"
            )

    @property
    def address(self) -> Listen:
        return parse_listen(self.listen)

    def resolve_token(self, *, source: str, table: str = "http") -> str | None:
        """The token, read from its file or variable now; `ConfigError`
        naming ``source`` and the key when it cannot be read or is too short."""
        if self.token is not None:
            return self.token.strip()
        if self.token_file is not None:
            key = f"{table}.token_file"
            try:
                lines = self.token_file.read_text(encoding="utf-8").splitlines()
            except OSError as error:
                raise ConfigError(
                    source, key, f"cannot read {self.token_file}: {error.strerror or error}"
                ) from None
            token = lines[0].strip() if lines else ""
            if len(token) < MIN_TOKEN_LENGTH:
                raise ConfigError(
                    source,
                    key,
                    f"the first line of {self.token_file} must hold a token of at least "
                    f"{MIN_TOKEN_LENGTH} characters",
                )
            return token
        if self.token_env is not None:
            token = os.environ.get(self.token_env, "").strip()
            if len(token) < MIN_TOKEN_LENGTH:
                raise ConfigError(
                    source,
                    f"{table}.token_env",
                    f"the environment variable {self.token_env} must hold a token of at least "
                    f"{MIN_TOKEN_LENGTH} characters",
                )
            return token
        return None
