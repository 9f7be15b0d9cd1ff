"""The SQL of `kernel_postgres.storage.PostgresStorage`: every statement,
written once with the schema's table names filled in (`Statements`), and
the column list a job row has. Why each statement has its shape (one round
trip per call, claims from the claim index) is said beside it."""

from __future__ import annotations

from typing import Final

import attrs

from kernel_postgres._url import quote_identifier

COLUMNS: Final = (
    ("id", "text"),
    ("task", "text"),
    ("args", "text"),
    ("kwargs", "text"),
    ("queue", "text"),
    ("priority", "integer"),
    ("run_at", "bigint"),
    ("enqueued_at", "bigint"),
    ("dedup_key", "text"),
    ("timeout", "double precision"),
    ("retry", "text"),
    ("attempts", "integer"),
    ("state", "text"),
    ("worker", "text"),
    ("lease_expires_at", "bigint"),
    ("last_error", "text"),
    ("finished_at", "bigint"),
    ("schedule", "text"),
    ("fire_time", "bigint"),
    ("headers", "text"),
)
_JOB_COLUMNS: Final = ", ".join(name for name, _ in COLUMNS)
_NO_PAYLOAD_COLUMNS: Final = _JOB_COLUMNS.replace("args, kwargs,", "'[]', '{{}}',")
"""The columns of a listing that shows no arguments: they are not read."""
_CAST_VALUES: Final = ", ".join(f"%s::{kind}" for _, kind in COLUMNS)
_LIVE: Final = "state IN ('queued', 'running')"
_HELD: Final = "WHERE id = %s AND state = 'running' AND worker = %s"
"""The jobs a worker holds: running, and claimed by it."""

ID_CONSTRAINT: Final = "kernel_jobs_id_key"
DEDUP_INDEX: Final = "kernel_jobs_dedup"

# An enqueue that claims a slot or may meet a dedup key, in one statement.
# ``fresh``: the id is not stored (checked first, as the memory store does,
# so a reused id claims no slot). ``slot``: the slot, claimed if free. ``ins``:
# the job, inserted if the slot was won, unless a live job holds the dedup
# key. Then the holder, read in the statement's snapshot (a holder committed
# after that snapshot began is not seen: the caller asks again).
_ENQUEUE_TAIL: Final = f"""
SELECT (SELECT ok FROM fresh), {{slot_claimed}}, EXISTS (SELECT 1 FROM ins), h.*
FROM (SELECT 1) AS one LEFT JOIN LATERAL (
    SELECT {_JOB_COLUMNS} FROM {{jobs}}
    WHERE dedup_key = %s AND {_LIVE} LIMIT 1
) AS h ON NOT EXISTS (SELECT 1 FROM ins)"""
_INSERT_UNLESS_HELD: Final = f"""
    INSERT INTO {{jobs}} ({_JOB_COLUMNS}) SELECT {_CAST_VALUES} WHERE {{condition}}
    ON CONFLICT (dedup_key) WHERE dedup_key IS NOT NULL AND {_LIVE} DO NOTHING
    RETURNING 1"""
_ENQUEUE_DEDUP: Final = (
    "WITH fresh AS (SELECT NOT EXISTS (SELECT 1 FROM {jobs} WHERE id = %s) AS ok), "
    "ins AS ("
    + _INSERT_UNLESS_HELD.replace("{condition}", "(SELECT ok FROM fresh)")
    + ")"
    + _ENQUEUE_TAIL.replace("{slot_claimed}", "true")
)
ENQUEUE_SLOT: Final = (
    "WITH fresh AS (SELECT NOT EXISTS (SELECT 1 FROM {jobs} WHERE id = %s) AS ok), "
    "slot AS (INSERT INTO {slots} (schedule, fire_time) SELECT %s::text, %s::bigint "
    "WHERE (SELECT ok FROM fresh) ON CONFLICT DO NOTHING RETURNING 1), "
    "ins AS ("
    + _INSERT_UNLESS_HELD.replace("{condition}", "EXISTS (SELECT 1 FROM slot)")
    + ")"
    + _ENQUEUE_TAIL.replace("{slot_claimed}", "EXISTS (SELECT 1 FROM slot)")
)

_CLAIM: Final = (
    "UPDATE {jobs} SET state = 'running', worker = %s, lease_expires_at = %s, "
    "attempts = attempts + 1 WHERE seq = ANY (ARRAY ("
    "SELECT seq FROM {jobs} WHERE queue = %s AND state = 'queued' AND run_at <= %s "
    "ORDER BY priority DESC, run_at, enqueued_at, seq LIMIT %s FOR UPDATE SKIP LOCKED"
    f")) RETURNING seq, {_JOB_COLUMNS}"
)
"""A claim without aging: one walk down ``kernel_jobs_claim`` in claim order,
skipping the rows other claims hold, stopping at LIMIT."""

_AGED: Final = "priority + greatest(0, %(now)s - greatest(run_at, enqueued_at)) / %(aging)s"
_CLAIM_AGED: Final = f"""
WITH RECURSIVE levels (priority) AS (
    (SELECT priority FROM {{jobs}} WHERE queue = %(queue)s AND state = 'queued'
     ORDER BY priority DESC LIMIT 1)
    UNION ALL
    SELECT (SELECT j.priority FROM {{jobs}} AS j
            WHERE j.queue = %(queue)s AND j.state = 'queued' AND j.priority < l.priority
            ORDER BY j.priority DESC LIMIT 1)
    FROM levels AS l WHERE l.priority IS NOT NULL
), heads AS MATERIALIZED (
    SELECT h.* FROM levels AS l, LATERAL (
        SELECT seq, priority, run_at, enqueued_at FROM {{jobs}}
        WHERE queue = %(queue)s AND state = 'queued' AND priority = l.priority
            AND run_at <= %(now)s AND run_at >= enqueued_at
        ORDER BY run_at, enqueued_at, seq LIMIT %(limit)s FOR UPDATE SKIP LOCKED
    ) AS h
), early AS MATERIALIZED (
    SELECT seq, priority, run_at, enqueued_at FROM {{jobs}}
    WHERE queue = %(queue)s AND state = 'queued' AND run_at < enqueued_at AND run_at <= %(now)s
    ORDER BY {_AGED} DESC, run_at, enqueued_at, seq LIMIT %(limit)s FOR UPDATE SKIP LOCKED
), picked AS (
    SELECT seq FROM (SELECT * FROM heads UNION ALL SELECT * FROM early) AS candidates
    ORDER BY {_AGED} DESC, run_at, enqueued_at, seq LIMIT %(limit)s
)
UPDATE {{jobs}} SET state = 'running', worker = %(worker)s, lease_expires_at = %(until)s,
    attempts = attempts + 1
WHERE seq = ANY (ARRAY (SELECT seq FROM picked))
RETURNING seq, {_JOB_COLUMNS}"""
"""A claim with aging, exact and without sorting every due job. Within one
priority level a job that became due at its ``run_at`` (``run_at >=
enqueued_at``, nearly all) has waited longer, so aged more, than every job
behind it in (run_at, enqueued_at, seq) order: the best ``limit`` jobs of a
claim are among the first ``limit`` of each level (``heads``, one short
index range per level; the levels are found by a loose index scan) and the
best ``limit`` of the few jobs enqueued with a past ``run_at`` (``early``,
which became due when enqueued and have an index of their own). The
candidates are locked (SKIP LOCKED) and the best ``limit`` claimed; the
others are released at commit. The memory store's per-level heaps, in SQL."""


_DONE: Final = """done AS (
    UPDATE {jobs} SET state = 'succeeded', lease_expires_at = NULL, finished_at = %(now)s
    WHERE id = ANY (%(completed)s) AND state = 'running' AND worker = %(worker)s RETURNING id
)"""
_DONE_AND_CLAIMED: Final = """
SELECT (SELECT coalesce(array_agg(id), ARRAY[]::text[]) FROM done), c.*
FROM (SELECT 1) AS one LEFT JOIN claimed AS c ON true"""
_COMPLETE_CLAIM: Final = (
    "WITH "
    + _DONE
    + ", claimed AS ("
    + _CLAIM.replace("worker = %s", "worker = %(worker)s")
    .replace("lease_expires_at = %s", "lease_expires_at = %(until)s")
    .replace("queue = %s", "queue = %(queue)s")
    .replace("run_at <= %s", "run_at <= %(now)s")
    .replace("LIMIT %s", "LIMIT %(limit)s")
    + ")"
    + _DONE_AND_CLAIMED
)
"""`complete_and_claim` without aging: the completions and the claim in one
statement, so one round trip (the statements see one snapshot, and touch
different rows: running ones, and queued ones)."""
_COMPLETE_CLAIM_AGED: Final = (
    _CLAIM_AGED.replace("WITH RECURSIVE levels", "WITH RECURSIVE " + _DONE + ", levels", 1)
    .replace("\nUPDATE {jobs}", ", claimed AS (\nUPDATE {jobs}", 1)
    .replace("RETURNING seq, " + _JOB_COLUMNS, "RETURNING seq, " + _JOB_COLUMNS + ")", 1)
    + _DONE_AND_CLAIMED
)
"""`complete_and_claim` with aging: the same, around the aged claim."""


@attrs.frozen
class Statements:
    """Every statement, with the schema's table names filled in (fixed
    strings, so psycopg prepares each on a connection after a few uses)."""

    kv_get: str
    kv_get_many: str
    kv_put: str
    kv_delete: str
    kv_keys: str
    kv_items: str
    kv_clear: str
    insert_job: str
    enqueue_dedup: str
    enqueue_slot: str
    claim: str
    claim_aged: str
    complete_claim: str
    complete_claim_aged: str
    heartbeat: str
    complete: str
    retry_later: str
    release: str
    bury: str
    cancel: str
    expired_workers: str
    reap: str
    get_job: str
    list_jobs: str
    list_jobs_no_payload: str
    retry_dead: str
    dedup_key_of: str
    purge: str
    purge_older: str
    next_due: str
    next_due_queue: str
    queued_queues: str
    claim_slot: str
    prune_slots: str
    get_schedule_state: str
    put_schedule_state: str

    @classmethod
    def for_schema(cls, schema: str) -> Statements:
        quoted = quote_identifier(schema)
        names = {
            "kv": f"{quoted}.kernel_kv",
            "jobs": f"{quoted}.kernel_jobs",
            "slots": f"{quoted}.kernel_schedule_slots",
            "states": f"{quoted}.kernel_schedule_state",
        }
        raw = {
            "kv_get": "SELECT value FROM {kv} WHERE namespace = %s AND key = %s",
            "kv_get_many": "SELECT key, value FROM {kv} WHERE namespace = %s AND key = ANY(%s)",
            "kv_put": (
                "INSERT INTO {kv} (namespace, key, value) VALUES (%s, %s, %s) "
                "ON CONFLICT (namespace, key) DO UPDATE SET value = EXCLUDED.value"
            ),
            "kv_delete": "DELETE FROM {kv} WHERE namespace = %s AND key = %s",
            "kv_keys": "SELECT key FROM {kv} WHERE namespace = %s AND key >= %s",
            "kv_items": "SELECT key, value FROM {kv} WHERE namespace = %s AND key >= %s",
            "kv_clear": "DELETE FROM {kv} WHERE namespace = %s",
            "insert_job": (
                f"INSERT INTO {{jobs}} ({_JOB_COLUMNS}) VALUES ({', '.join(['%s'] * len(COLUMNS))})"
            ),
            "enqueue_dedup": _ENQUEUE_DEDUP,
            "enqueue_slot": ENQUEUE_SLOT,
            "claim": _CLAIM,
            "claim_aged": _CLAIM_AGED,
            "complete_claim": _COMPLETE_CLAIM,
            "complete_claim_aged": _COMPLETE_CLAIM_AGED,
            "heartbeat": (
                "UPDATE {jobs} SET lease_expires_at = %s "
                "WHERE id = ANY(%s) AND state = 'running' AND worker = %s RETURNING id"
            ),
            "complete": (
                "UPDATE {jobs} SET state = 'succeeded', lease_expires_at = NULL, "
                f"finished_at = %s {_HELD}"
            ),
            "retry_later": (
                "UPDATE {jobs} SET state = 'queued', run_at = %s, worker = NULL, "
                f"lease_expires_at = NULL, last_error = %s {_HELD}"
            ),
            "release": (
                "UPDATE {jobs} SET state = 'queued', run_at = %s, worker = NULL, "
                f"lease_expires_at = NULL, attempts = greatest(attempts - 1, 0) {_HELD}"
            ),
            "bury": (
                "UPDATE {jobs} SET state = 'dead', lease_expires_at = NULL, "
                f"last_error = %s, finished_at = %s {_HELD}"
            ),
            "cancel": (
                "UPDATE {jobs} SET state = 'cancelled', lease_expires_at = NULL, "
                f"finished_at = %s WHERE id = %s AND {_LIVE} RETURNING {_JOB_COLUMNS}"
            ),
            "expired_workers": (
                "SELECT DISTINCT worker FROM {jobs} "
                "WHERE state = 'running' AND lease_expires_at <= %s"
            ),
            "reap": (
                "UPDATE {jobs} AS j SET state = 'queued', worker = NULL, "
                "lease_expires_at = NULL, last_error = m.error "
                "FROM unnest(%s::text[], %s::text[]) AS m (worker, error) "
                "WHERE j.worker = m.worker AND j.state = 'running' "
                "AND j.lease_expires_at <= %s RETURNING j.seq, j.id"
            ),
            "get_job": f"SELECT {_JOB_COLUMNS} FROM {{jobs}} WHERE id = %s",
            "list_jobs": f"SELECT {_JOB_COLUMNS} FROM {{jobs}}",
            "list_jobs_no_payload": f"SELECT {_NO_PAYLOAD_COLUMNS} FROM {{jobs}}",
            "retry_dead": (
                "UPDATE {jobs} SET state = 'queued', run_at = %s, attempts = 0, "
                "worker = NULL, finished_at = NULL WHERE id = %s AND state = 'dead' "
                f"RETURNING {_JOB_COLUMNS}"
            ),
            "dedup_key_of": "SELECT dedup_key FROM {jobs} WHERE id = %s",
            "purge": "DELETE FROM {jobs} WHERE state = %s",
            "purge_older": "DELETE FROM {jobs} WHERE state = %s AND finished_at < %s",
            "next_due": "SELECT min(run_at) FROM {jobs} WHERE state = 'queued'",
            "next_due_queue": (
                "SELECT min(run_at) FROM {jobs} WHERE queue = %s AND state = 'queued'"
            ),
            "queued_queues": "SELECT DISTINCT queue FROM {jobs} WHERE state = 'queued'",
            "claim_slot": (
                "INSERT INTO {slots} (schedule, fire_time) VALUES (%s, %s) ON CONFLICT DO NOTHING"
            ),
            "prune_slots": "DELETE FROM {slots} WHERE fire_time < %s",
            "get_schedule_state": "SELECT state FROM {states} WHERE schedule = %s",
            "put_schedule_state": (
                "INSERT INTO {states} (schedule, state) VALUES (%s, %s) "
                "ON CONFLICT (schedule) DO UPDATE SET state = EXCLUDED.state"
            ),
        }
        return cls(**{name: sql.format(**names) for name, sql in raw.items()})
