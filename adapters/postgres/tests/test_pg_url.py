"""URLs: the kernel's options, libpq's, and errors that never show a password."""

from __future__ import annotations

import pytest

from kernel.errors import InvalidAdapterURL
from kernel.ports import redact_url
from kernel_postgres import PostgresOptions, parse_postgres_url
from kernel_postgres._url import BUS_OPTIONS, channel_name


def test_defaults_and_what_libpq_gets() -> None:
    options = parse_postgres_url("postgresql://app:s3cret@db.internal:5433/jobs?sslmode=disable")
    assert (options.schema, options.pool_size, options.pool_timeout, options.migrate) == (
        "public",
        10,
        10.0,
        False,
    )
    assert options.conninfo == "postgresql://app:s3cret@db.internal:5433/jobs?sslmode=disable"
    assert options.location == "postgresql://app:***@db.internal:5433/jobs"
    assert options.where == "postgresql://app:***@db.internal:5433/jobs (schema public)"
    assert "s3cret" not in repr(options)


def test_kernel_options_are_taken_out_before_libpq_sees_the_url() -> None:
    options = parse_postgres_url(
        "postgres://u@h/db?schema=kernel_a&pool_size=3&application_name=node-1"
        "&pool_timeout=2.5&migrate=true"
    )
    assert options == PostgresOptions(
        conninfo="postgres://u@h/db?application_name=node-1",
        location="postgres://u@h/db",
        schema="kernel_a",
        pool_size=3,
        pool_timeout=2.5,
        migrate=True,
    )


def test_bus_options() -> None:
    options = parse_postgres_url(
        "postgresql://h/db?buffer=16&max_message=5000&schema=s", allowed=BUS_OPTIONS
    )
    assert (options.buffer, options.max_message, options.schema) == (16, 5000, "s")


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("mysql://h/db", "is not a postgresql:// URL"),
        ("postgresql://h/db#frag", "#fragment"),
        ("postgresql://h/db?schema=Kernel", "schema='Kernel'"),
        ("postgresql://h/db?schema=1abc", "schema='1abc'"),
        ("postgresql://h/db?schema=pg_temp", "schema='pg_temp'"),
        ("postgresql://h/db?schema=a-b", "schema='a-b'"),
        ("postgresql://h/db?schema=", "schema=''"),
        ("postgresql://h/db?schema=" + "s" * 64, "at most 63"),
        ("postgresql://h/db?pool_size=0", "pool_size='0'"),
        ("postgresql://h/db?pool_size=many", "pool_size='many'"),
        ("postgresql://h/db?pool_size=1001", "from 1 to 1000"),
        ("postgresql://h/db?pool_timeout=-1", "pool_timeout='-1'"),
        ("postgresql://h/db?pool_timeout=nan", "pool_timeout='nan'"),
        ("postgresql://h/db?migrate=maybe", "migrate='maybe'"),
        ("postgresql://h/db?schema=a&schema=b", "'schema' is given twice"),
        ("postgresql://h/db?buffer=10", "'buffer' does not apply here"),
        ("postgresql://h/db?bogus=1", 'invalid URI query parameter: "bogus"'),
        ("postgresql://h/db?a", "cannot be parsed"),
    ],
)
def test_bad_urls_say_what_is_wrong(url: str, reason: str) -> None:
    with pytest.raises(InvalidAdapterURL) as refused:
        parse_postgres_url(url)
    assert reason in str(refused.value)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://app:hunter2@h/db?bogus=1",
        "postgresql://app@h/db?password=hunter2&bogus=1",
        "postgresql://app:hunter2@h/db?schema=BAD",
        "mysql://app:hunter2@h/db",
    ],
)
def test_errors_never_show_the_password(url: str) -> None:
    with pytest.raises(InvalidAdapterURL) as refused:
        parse_postgres_url(url)
    assert "hunter2" not in str(refused.value)
    assert "***" in str(refused.value)


def test_redact_url_hides_both_places() -> None:
    assert redact_url("postgresql://a:b@h/db?password=c&x=1") == (
        "postgresql://a:***@h/db?password=***&x=1"
    )


def test_not_a_str() -> None:
    with pytest.raises(InvalidAdapterURL):
        parse_postgres_url(5)  # type: ignore[arg-type]


def test_channel_names_fit_postgres_limit() -> None:
    assert channel_name("kernel_jobs", "public") == "kernel_jobs:public"
    long = channel_name("kernel_jobs", "s" * 63)
    assert long.startswith("kernel_jobs:")
    assert len(long.encode()) <= 63
    assert long == channel_name("kernel_jobs", "s" * 63)
    assert long != channel_name("kernel_jobs", "s" * 62 + "t")
