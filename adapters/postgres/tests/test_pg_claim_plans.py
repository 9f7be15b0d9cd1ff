"""A claim's cost does not grow with the backlog: with 20,000 jobs queued (and
as many finished) the claim statements, aged and not, read a bounded number
of rows from the claim index, never scan the table, and never sort the
backlog. Each statement is run under EXPLAIN ANALYZE in a transaction that
is rolled back, so the plan shown is the one PostgreSQL really ran."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pg_helpers import Admin

from kernel_postgres._statements import Statements

QUEUED = 20_000
LIMIT = 10
LEVELS = 3


def fill(admin: Admin, schema: str) -> None:
    jobs = f'"{schema}".kernel_jobs'
    for state, offset in (("succeeded", 0), ("queued", QUEUED)):
        admin.execute(
            f"INSERT INTO {jobs} (id, task, args, kwargs, queue, priority, run_at,"
            " enqueued_at, attempts, state)"
            " SELECT 'j' || (g + %s), 't', '[]', '{}', 'q', g %% %s, 1000000 + g,"
            " 1000000 + g, 0, %s FROM generate_series(1, %s) AS g",
            (offset, LEVELS, state, QUEUED),
        )
    admin.execute(f"ANALYZE {jobs}")


def nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    found = [plan]
    for child in plan.get("Plans", []):
        found += nodes(child)
    return found


@pytest.mark.parametrize("statement", ["complete_claim", "complete_claim_aged"])
def test_a_claim_reads_a_bounded_part_of_a_large_backlog(
    admin: Admin, schema: str, statement: str
) -> None:
    fill(admin, schema)
    sql = getattr(Statements.for_schema(schema), statement)
    params = {
        "completed": [],
        "worker": "w",
        "until": 10**15,
        "queue": "q",
        "now": 10**13,
        "limit": LIMIT,
        "aging": 60_000_000,
    }
    with admin.transaction(force_rollback=True):
        row = admin.execute(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}", params).fetchone()
    assert row is not None
    document = row[0] if isinstance(row[0], list) else json.loads(str(row[0]))
    every = nodes(document[0]["Plan"])
    text = json.dumps(document)
    on_jobs = [node for node in every if node.get("Relation Name") == "kernel_jobs"]
    assert on_jobs, text
    assert not any(node["Node Type"] == "Seq Scan" for node in on_jobs), text
    assert any(node.get("Index Name") == "kernel_jobs_claim" for node in on_jobs), text
    # rows read from the table per loop: at most the limit per priority level
    # (plus the level walk's one row per level), never the backlog
    read = sum(node["Actual Rows"] * node["Actual Loops"] for node in on_jobs)
    assert read <= 4 * LIMIT * LEVELS, (read, text)
    sorts = [node for node in every if node["Node Type"] == "Sort"]
    assert all(node["Actual Rows"] <= LIMIT * (LEVELS + 1) for node in sorts), text
    claimed = [node for node in every if node["Node Type"] == "ModifyTable"]
    assert claimed, text
