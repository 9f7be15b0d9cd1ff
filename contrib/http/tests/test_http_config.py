"""The [http] table: listen addresses and tokens."""

from __future__ import annotations

from pathlib import Path

import pytest

from kernel.config.structure import structure_config
from kernel.errors import ConfigError
from kernel_http.config import HttpConfig, Listen, parse_listen


@pytest.mark.parametrize(
    ("text", "listen", "loopback"),
    [
        ("127.0.0.1:8080", Listen("127.0.0.1", 8080), True),
        ("localhost:0", Listen("localhost", 0), True),
        ("[::1]:9000", Listen("::1", 9000), True),
        ("0.0.0.0:80", Listen("0.0.0.0", 80), False),
        ("[::]:80", Listen("::", 80), False),
        ("kernel.internal:8080", Listen("kernel.internal", 8080), False),
    ],
)
def test_listen_addresses(text: str, listen: Listen, loopback: bool) -> None:
    assert parse_listen(text) == listen
    assert parse_listen(text).loopback is loopback


def test_ipv6_binds_in_brackets() -> None:
    assert parse_listen("[::1]:9000").bind == "[::1]:9000"
    assert parse_listen("127.0.0.1:1").bind == "127.0.0.1:1"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("8080", "expected 'host:port'"),
        ("127.0.0.1:99999", "port 99999 is out of range"),
        ("[1::2::3]:80", "is not an IPv6 address"),
        ("http://127.0.0.1:80", "expected 'host:port'"),
    ],
)
def test_bad_listen_addresses_say_why(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_listen(text)


def structure(table: dict[str, object]) -> HttpConfig:
    return structure_config(table, HttpConfig, source="k.toml", prefix="http")


def test_the_token_comes_from_one_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "s3cret-token-for-tests-0001"
    assert structure({"token": secret}).resolve_token(source="k.toml") == secret
    path = tmp_path / "token"
    path.write_text(secret + "\nignored second line\n")
    assert structure({"token_file": str(path)}).resolve_token(source="k.toml") == secret
    monkeypatch.setenv("KERNEL_HTTP_TEST_TOKEN", f"  {secret}  ")
    config = structure({"token_env": "KERNEL_HTTP_TEST_TOKEN"})
    assert config.resolve_token(source="k.toml") == secret
    assert structure({}).resolve_token(source="k.toml") is None
    assert secret not in repr(structure({"token": secret}))
    with pytest.raises(ConfigError, match="give one of token, token_file and token_env"):
        structure({"token": secret, "token_file": str(path)})


def test_a_short_token_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("short\n")
    with pytest.raises(ConfigError, match=r"at http\.token_file: the first line of"):
        structure({"token_file": str(path)}).resolve_token(source="k.toml")


def test_beyond_loopback_a_token_is_required() -> None:
    with pytest.raises(ConfigError) as raised:
        structure({"listen": "0.0.0.0:8080"})
    assert str(raised.value) == (
        "config error in k.toml at http: listening on 0.0.0.0:8080 (beyond loopback) "
        "needs a token: set token, token_file or token_env"
    )
    assert structure({"listen": "0.0.0.0:8080", "token_env": "X"}).address.loopback is False
    with pytest.raises(ConfigError, match=r"at http\.token_env: expected an environment variable"):
        structure({"token_env": "not a name"})
