"""URLs: the server, the kernel's options, and errors that never show a password."""

from __future__ import annotations

import pytest

from kernel.errors import InvalidAdapterURL
from kernel_redis import RedisOptions, parse_redis_url
from kernel_redis._url import BUS_OPTIONS, shown_url


def test_defaults() -> None:
    options = parse_redis_url("redis://127.0.0.1")
    assert options == RedisOptions(
        host="127.0.0.1", port=6379, db=0, location="redis://127.0.0.1/0"
    )
    assert (options.prefix, options.pool_size, options.pool_timeout) == ("kernel:", 10, 10.0)
    assert (options.connect_timeout, options.client_name, options.ssl) == (
        5.0,
        "trio-kernel",
        False,
    )
    assert options.where == "redis://127.0.0.1/0 (prefix 'kernel:')"


def test_the_server_and_the_kernel_options() -> None:
    options = parse_redis_url(
        "redis://app:s%40cret@cache.internal:6380/3?prefix=kernel:prod:&pool_size=20"
        "&pool_timeout=2.5&connect_timeout=1&client_name=node-1"
    )
    assert (options.host, options.port, options.db) == ("cache.internal", 6380, 3)
    assert (options.username, options.password) == ("app", "s@cret")
    assert options.location == "redis://app:***@cache.internal:6380/3"
    assert (options.prefix, options.pool_size, options.pool_timeout) == ("kernel:prod:", 20, 2.5)
    assert (options.connect_timeout, options.client_name) == (1.0, "node-1")
    assert "s@cret" not in repr(options)


def test_a_password_alone_and_tls() -> None:
    options = parse_redis_url(
        "rediss://:pw@h:6390?ssl_cert_reqs=required&ssl_ca_certs=/etc/ca.pem"
        "&ssl_check_hostname=false"
    )
    assert (options.username, options.password, options.ssl) == (None, "pw", True)
    assert (options.ssl_cert_reqs, options.ssl_ca_certs, options.ssl_check_hostname) == (
        "required",
        "/etc/ca.pem",
        False,
    )
    assert options.location == "rediss://:***@h:6390/0"


def test_bus_options() -> None:
    assert parse_redis_url("redis://h?buffer=16", allowed=BUS_OPTIONS).buffer == 16


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("postgresql://h/db", "is not a redis:// or rediss:// URL"),
        ("redis://h/0#frag", "#fragment"),
        ("redis:///0", "names no host"),
        ("redis://h/zero", "the database (path)='zero'"),
        ("redis://h:99999/0", "cannot be parsed"),
        ("redis://h?prefix=", "prefix=''"),
        ("redis://h?prefix=a*b", "prefix='a*b'"),
        ("redis://h?prefix=" + "p" * 101, "prefix="),
        ("redis://h?pool_size=0", "pool_size='0'"),
        ("redis://h?pool_timeout=-1", "pool_timeout='-1'"),
        ("redis://h?connect_timeout=nan", "connect_timeout='nan'"),
        ("redis://h?client_name=a%20b", "client_name='a b'"),
        ("redis://h?buffer=5", "option 'buffer' does not apply here"),
        ("redis://h?decode_responses=1", "option 'decode_responses' is unknown"),
        ("redis://h?prefix=a&prefix=b", "given twice"),
        ("redis://h?ssl_cert_reqs=none", "TLS options need a rediss:// URL"),
        ("rediss://h?ssl_cert_reqs=maybe", "ssl_cert_reqs='maybe'"),
        ("rediss://h?ssl_check_hostname=perhaps", "expected true or false"),
    ],
)
def test_bad_urls_say_what_is_wrong(url: str, reason: str) -> None:
    with pytest.raises(InvalidAdapterURL) as refused:
        parse_redis_url(url)
    assert reason in str(refused.value)


@pytest.mark.parametrize(
    "url",
    [
        "redis://app:s3cret@h/0?pool_size=0",
        "redis://:s3cret@h/nope",
        "mysql://app:s3cret@h/db",
        "redis://app:s3cret@h/0?password=s3cret&prefix=",
    ],
)
def test_errors_never_show_the_password(url: str) -> None:
    with pytest.raises(InvalidAdapterURL) as refused:
        parse_redis_url(url)
    assert "s3cret" not in str(refused.value)


def test_shown_url_redacts_both_places() -> None:
    assert shown_url("redis://u:pw@h/0?password=pw&x=1") == "redis://u:***@h/0?password=***&x=1"


def test_not_a_str() -> None:
    with pytest.raises(InvalidAdapterURL, match="must be a str"):
        parse_redis_url(b"redis://h")  # type: ignore[arg-type]


def test_entry_points_find_the_adapter() -> None:
    from importlib.metadata import entry_points

    import kernel_redis

    for group in ("kernel.storage", "kernel.bus"):
        found = {
            ep.name: ep.load() for ep in entry_points(group=group) if ep.name.startswith("red")
        }
        factory = kernel_redis.open_storage if group == "kernel.storage" else kernel_redis.open_bus
        assert found == {"redis": factory, "rediss": factory}
