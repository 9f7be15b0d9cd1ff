"""Helpers for the PostgreSQL adapter's tests (a module name of its own, so
that importing it never picks up another directory's conftest)."""

from __future__ import annotations

import urllib.parse

import psycopg

from kernel_postgres._url import quote_identifier

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"

Admin = psycopg.Connection[tuple[object, ...]]


def with_options(url: str, **options: object) -> str:
    """``url`` with ``options`` added to its query."""
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query)
    query += [(name, str(value)) for name, value in options.items()]
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


def drop_schema(admin: Admin, schema: str) -> None:
    admin.execute(f"DROP SCHEMA IF EXISTS {quote_identifier(schema)} CASCADE")
