"""The error types trio-kernel raises, all in one place (httpx's
``_exceptions.py`` shows its hierarchy the same way).

Every error a user can cause is a `KernelError` that carries the offending
input and says where it came from, so a message can name what is wrong
without a traceback. A builtin in brackets is a further base, so code that
catches ``ValueError`` or ``LookupError`` keeps working::

    KernelError
    ├── CronSyntaxError (ValueError)
    ├── MetricError (ValueError)
    ├── HealthCheckError (ValueError)
    ├── NotJSONSerializable (TypeError, ValueError)
    ├── StorageError
    │   ├── InvalidStorageKey (ValueError)
    │   ├── StorageClosed
    │   ├── StorageLost
    │   ├── JobConflict
    │   ├── SchemaVersionError
    │   └── SchemaOutdated
    ├── BusError
    │   ├── InvalidTopic (ValueError)
    │   └── BusClosed
    ├── NotifierError
    │   ├── InvalidNotification (ValueError)
    │   ├── NotifierClosed
    │   ├── NotificationFailed
    │   └── NotifierNotConfigured (LookupError)
    ├── InvalidAdapterURL (ValueError)
    ├── AdapterNotFound (LookupError)
    ├── AdapterLoadError
    ├── EntryPointConflict
    ├── PluginNotFound (LookupError)
    ├── PluginLoadError
    ├── PermissionDenied
    ├── PluginDependencyError
    ├── PluginStateError
    ├── ConfigError (ValueError)
    ├── InvalidRetryPolicy (ValueError)
    ├── InvalidCircuitBreaker (ValueError)
    ├── CircuitOpen
    ├── InvalidJob (ValueError)
    ├── UnknownTask (LookupError)
    ├── DuplicateTask (ValueError)
    ├── JobTimedOut
    ├── KernelNotRunning (RuntimeError)
    ├── NotFound (LookupError)
    ├── StatusUnavailable
    ├── StatusSocketError
    └── PayloadError (TypeError)
"""

from __future__ import annotations

__all__ = [
    "AdapterLoadError",
    "AdapterNotFound",
    "BusClosed",
    "BusError",
    "CircuitOpen",
    "ConfigError",
    "CronSyntaxError",
    "DuplicateTask",
    "EntryPointConflict",
    "HealthCheckError",
    "InvalidAdapterURL",
    "InvalidCircuitBreaker",
    "InvalidJob",
    "InvalidNotification",
    "InvalidRetryPolicy",
    "InvalidStorageKey",
    "InvalidTopic",
    "JobConflict",
    "JobTimedOut",
    "KernelError",
    "KernelNotRunning",
    "MetricError",
    "NotFound",
    "NotJSONSerializable",
    "NotificationFailed",
    "NotifierClosed",
    "NotifierError",
    "NotifierNotConfigured",
    "PayloadError",
    "PermissionDenied",
    "PluginDependencyError",
    "PluginLoadError",
    "PluginNotFound",
    "PluginStateError",
    "SchemaOutdated",
    "SchemaVersionError",
    "StatusSocketError",
    "StatusUnavailable",
    "StorageClosed",
    "StorageError",
    "StorageLost",
    "UnknownTask",
]


class KernelError(Exception):
    """Base class of every error trio-kernel raises on purpose."""


class CronSyntaxError(KernelError, ValueError):
    """A cron expression that cannot be parsed.

    Carries the whole ``expression``, the ``field`` name (``"minute"``,
    ``"day-of-week"``...) or ``None`` when the shape of the expression is
    wrong, the offending ``token``, its character ``position`` inside the
    expression (for a caret under it) and a human ``reason``.
    """

    def __init__(
        self,
        expression: str,
        reason: str,
        *,
        field: str | None = None,
        token: str | None = None,
        position: int | None = None,
    ) -> None:
        self.expression = expression
        self.reason = reason
        self.field = field
        self.token = token
        self.position = position
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f"{self.field} field " if self.field else ""
        what = f"{self.token!r}: " if self.token is not None else ""
        return f"invalid cron expression {self.expression!r}: {where}{what}{self.reason}"


class MetricError(KernelError, ValueError):
    """A metric used wrongly: an invalid metric or label name, a name reused
    for another kind, a counter decremented, a negative or non-finite value.

    Carries the metric ``name`` (or its kind when the name is not at hand)
    and a human ``reason``.
    """

    def __init__(self, name: str, reason: str) -> None:
        self.name = name
        self.reason = reason
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"metric {self.name!r}: {self.reason}"


class HealthCheckError(KernelError, ValueError):
    """A health check registered wrongly: an empty, reserved or duplicate
    ``name``, a check that is not callable, a timeout that is not positive."""

    def __init__(self, name: str, reason: str) -> None:
        self.name = name
        self.reason = reason
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"health check {self.name!r}: {self.reason}"


# --- ports and adapters (kernel.ports, kernel.runtime.discovery) -------------------


class NotJSONSerializable(KernelError, TypeError, ValueError):
    """A value that is not plain JSON, found before anything was stored or sent.

    Carries the ``path`` of the offending part inside the value, written as
    Python would index it (``value['a'][2]``), the offending ``value`` itself
    and a human ``reason``. It is both a `TypeError` (a set, bytes, an object)
    and a `ValueError` (NaN, a cycle), as `json.dumps` raises either.
    """

    def __init__(self, path: str, value: object, reason: str) -> None:
        self.path = path
        self.value = value
        self.reason = reason
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


class StorageError(KernelError):
    """Base class of what a storage adapter raises; a backend failure (lost
    connection, disk full) is a `StorageError` with the driver's exception
    as ``__cause__``."""


class InvalidStorageKey(StorageError, ValueError):
    """A namespace, key or key prefix that no storage adapter may accept.

    Carries ``kind`` (``"namespace"``, ``"key"`` or ``"prefix"``), the
    offending ``value`` and a human ``reason``.
    """

    def __init__(self, kind: str, value: object, reason: str) -> None:
        self.kind = kind
        self.value = value
        self.reason = reason
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"invalid storage {self.kind} {self.value!r}: {self.reason}"


class StorageClosed(StorageError):
    """The storage was used after `aclose`."""


class StorageLost(StorageError):
    """The store is gone for good while in use (its SQLite file deleted or
    replaced): nothing written from now on would survive, and only opening
    it again (a restart) helps."""


class BusError(KernelError):
    """Base class of what a bus adapter raises; a backend failure is a
    `BusError` with the driver's exception as ``__cause__``."""


class InvalidTopic(BusError, ValueError):
    """A topic (to publish on) or pattern (to subscribe to) that is malformed.

    Carries ``kind`` (``"topic"`` or ``"pattern"``), the offending ``value``
    and a human ``reason``.
    """

    def __init__(self, kind: str, value: object, reason: str) -> None:
        self.kind = kind
        self.value = value
        self.reason = reason
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"invalid bus {self.kind} {self.value!r}: {self.reason}"


class BusClosed(BusError):
    """The bus was published to or subscribed to after `aclose`."""


class NotifierError(KernelError):
    """Base class of what a notifier adapter raises; a delivery failure is a
    `NotifierError` with the driver's exception as ``__cause__``."""


class InvalidNotification(NotifierError, ValueError):
    """A notification whose ``field`` (``"title"``, ``"message"`` or
    ``"level"``) holds an unacceptable ``value``, for the human ``reason``."""

    def __init__(self, field: str, value: object, reason: str) -> None:
        self.field = field
        self.value = value
        self.reason = reason
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"invalid notification {self.field} {self.value!r}: {self.reason}"


class NotifierClosed(NotifierError):
    """The notifier was used after `aclose`."""


class NotificationFailed(NotifierError):
    """A notification the ``notifier`` (shown without secrets) could not
    deliver, for the human ``reason``; the driver's error is the
    ``__cause__``. ``retry_after`` is how many seconds the service asked to
    wait before trying again (HTTP ``Retry-After``), when it said so: the
    kernel's retry policy never tries sooner."""

    def __init__(self, notifier: str, reason: str, *, retry_after: float | None = None) -> None:
        self.notifier = notifier
        self.reason = reason
        self.retry_after = retry_after
        super().__init__(str(self))

    def __str__(self) -> str:
        text = f"notification to {self.notifier} failed: {self.reason}"
        if self.retry_after is not None:
            text += f" (the service asked to retry after {self.retry_after:g} s)"
        return text


class NotifierNotConfigured(NotifierError, LookupError):
    """A stored notification names a ``notifier`` that this kernel's config
    no longer has (it was renamed or removed); it is not retried."""

    def __init__(self, notifier: str, known: list[str]) -> None:
        self.notifier = notifier
        self.known = known
        super().__init__(str(self))

    def __str__(self) -> str:
        known = ", ".join(self.known) or "none"
        return f"no notifier {self.notifier!r} is configured (configured: {known})"


class InvalidAdapterURL(KernelError, ValueError):
    """An adapter URL that cannot be parsed or that its adapter rejects.

    Carries the ``url`` (with any password replaced by ``***``) and a human
    ``reason``.
    """

    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        self.reason = reason
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"invalid adapter URL {self.url!r}: {self.reason}"


class AdapterNotFound(KernelError, LookupError):
    """No adapter of the ``port`` (``"storage"``, ``"bus"``, ``"notifier"``)
    handles the URL's ``scheme``; carries the ``url`` (password redacted), the
    entry-point ``group`` searched and the ``known`` schemes."""

    def __init__(self, port: str, scheme: str, url: str, group: str, known: list[str]) -> None:
        self.port = port
        self.scheme = scheme
        self.url = url
        self.group = group
        self.known = known
        super().__init__(str(self))

    def __str__(self) -> str:
        known = ", ".join(self.known) or "none"
        return (
            f"no {self.port} adapter for scheme {self.scheme!r} in {self.url!r}; "
            f"known schemes: {known} (adapters register in entry-point group {self.group!r})"
        )


class AdapterLoadError(KernelError):
    """An adapter was found but could not be used: its entry point failed to
    import, or its factory returned something that is not a ``port``.

    Carries the ``port``, the ``scheme``, the ``source`` (``"built-in"`` or the
    entry point and its distribution) and a human ``reason``; the original
    exception, if any, is the ``__cause__``.
    """

    def __init__(self, port: str, scheme: str, source: str, reason: str) -> None:
        self.port = port
        self.scheme = scheme
        self.source = source
        self.reason = reason
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"{self.port} adapter {self.scheme!r} ({self.source}): {self.reason}"


class EntryPointConflict(KernelError):
    """Two providers claim one ``name`` in one entry-point ``group`` (or an
    entry point claims a built-in adapter's scheme); carries the ``providers``
    so the message says what to uninstall or rename."""

    def __init__(self, group: str, name: str, providers: list[str]) -> None:
        self.group = group
        self.name = name
        self.providers = providers
        super().__init__(str(self))

    def __str__(self) -> str:
        return (
            f"{self.name!r} in entry-point group {self.group!r} is claimed by "
            f"{' and '.join(self.providers)}; uninstall one or rename its entry point"
        )


class PluginNotFound(KernelError, LookupError):
    """A plugin ``reference`` (an entry-point name or ``module:attribute``)
    that names nothing: a missing module, attribute or entry point, or a
    malformed reference, for the human ``reason``."""

    def __init__(self, reference: str, reason: str) -> None:
        self.reference = reference
        self.reason = reason
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"plugin {self.reference!r} not found: {self.reason}"


class PluginLoadError(KernelError):
    """A plugin ``reference`` that names something which failed to load: its
    module raised while importing, or the object is not callable. The
    original exception, if any, is the ``__cause__``."""

    def __init__(self, reference: str, reason: str) -> None:
        self.reference = reference
        self.reason = reason
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"plugin {self.reference!r} failed to load: {self.reason}"


class PermissionDenied(KernelError):
    """A plugin used a capability its manifest did not ask for."""

    def __init__(self, plugin: str, permission: str, action: str = "") -> None:
        self.plugin = plugin
        self.permission = permission
        self.action = action
        super().__init__(str(self))

    def __str__(self) -> str:
        if self.action:
            return (
                f"plugin {self.plugin!r} may not {self.action} without the"
                f" {self.permission!r} permission: add it to the permissions of its manifest"
            )
        return (
            f"plugin {self.plugin!r} is not allowed to use {self.permission!r}:"
            f" add it to the permissions of its manifest"
        )


class PluginDependencyError(KernelError):
    """The plugins' ``requires`` cannot be satisfied: a missing plugin or a cycle."""

    def __init__(self, reason: str, *, plugins: tuple[str, ...] = ()) -> None:
        self.reason = reason
        self.plugins = plugins
        super().__init__(reason)


class PluginStateError(KernelError):
    """An operation on a plugin that its state does not allow (or an unknown name)."""


# --- configuration (kernel.config) ------------------------------------------


class ConfigError(KernelError, ValueError):
    """A config file (or table) that cannot be used: missing, unreadable, not
    TOML, or holding values of the wrong shape.

    Carries the ``source`` (a file path or ``"plugin 'sync'"``), the dotted
    key ``path`` as TOML writes it (``plugins.sync.config.interval``,
    ``retention.rules[2].days``; ``""`` for the whole document), a human
    ``reason`` and, for a value of the wrong type, what was ``expected``
    (``"an integer"``). Several problems found at once are all in
    ``problems`` (each a single-problem `ConfigError`); the message names the
    first and counts the rest, on one line.
    """

    def __init__(
        self,
        source: str,
        path: str,
        reason: str,
        *,
        expected: str | None = None,
        problems: tuple[ConfigError, ...] | list[ConfigError] = (),
    ) -> None:
        self.source = source
        self.path = path
        self.reason = " ".join(reason.split())
        self.expected = expected
        self.problems: tuple[ConfigError, ...] = tuple(problems) or (self,)
        super().__init__(str(self))

    @classmethod
    def from_problems(cls, problems: tuple[ConfigError, ...] | list[ConfigError]) -> ConfigError:
        """One error for ``problems`` (not empty), worded after the first."""
        first = problems[0]
        return cls(
            first.source, first.path, first.reason, expected=first.expected, problems=problems
        )

    def __str__(self) -> str:
        where = f" at {self.path}" if self.path else ""
        more = len(self.problems) - 1
        tail = f" (and {more} more problem{'s' if more > 1 else ''})" if more > 0 else ""
        return f"config error in {self.source}{where}: {self.reason}{tail}"


# --- retries and circuit breakers (kernel.resilience.retry, kernel.resilience.breaker) ------------


class InvalidRetryPolicy(KernelError, ValueError):
    """A retry policy that cannot be built: a ``field`` holding an unusable
    ``value`` (a factor below 1, an unknown exception name in stored JSON...)
    for the human ``reason``."""

    def __init__(self, field: str, value: object, reason: str) -> None:
        self.field = field
        self.value = value
        self.reason = reason
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"invalid retry policy: {self.field}={self.value!r}: {self.reason}"


class InvalidCircuitBreaker(KernelError, ValueError):
    """A circuit breaker configured wrongly: the breaker's ``name``, the
    ``field`` (``"failure_rate"``...), its ``value`` and the human ``reason``."""

    def __init__(self, name: object, field: str, value: object, reason: str) -> None:
        self.name = name
        self.field = field
        self.value = value
        self.reason = reason
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"circuit breaker {self.name!r}: {self.field}={self.value!r}: {self.reason}"


class CircuitOpen(KernelError):
    """A call rejected by the circuit breaker ``name`` without being made.

    ``state`` is ``"open"`` (the breaker half-opens in ``retry_after``
    seconds) or ``"half-open"`` (all its probe calls are taken; ``retry_after``
    is 0 because the probes, not the clock, decide what comes next).
    """

    def __init__(self, name: str, retry_after: float, *, state: str = "open") -> None:
        self.name = name
        self.retry_after = retry_after
        self.state = state
        super().__init__(str(self))

    def __str__(self) -> str:
        if self.state == "open":
            seconds = f"{self.retry_after:.3f}".rstrip("0").rstrip(".")
            return (
                f"circuit breaker {self.name!r} is open: calls are rejected for"
                f" another {seconds} s, then it half-opens"
            )
        return (
            f"circuit breaker {self.name!r} is {self.state} and its probe calls are all"
            f" taken: try again when they have finished"
        )


# --- jobs and the SQLite storage (kernel.jobs.record, kernel.storage.sqlite.storage) --------


class InvalidJob(KernelError, ValueError):
    """A job field, or an argument of a job-store call, that no store may
    accept: a naive datetime, a negative lease, an empty queue name, a
    record in the wrong state for the call.

    Carries the ``field`` (``"run_at"``, ``"lease"``, ``"job_id"``...), the
    offending ``value`` and a human ``reason``; raised before anything is
    stored, so a refused call changes nothing.
    """

    def __init__(self, field: str, value: object, reason: str) -> None:
        self.field = field
        self.value = value
        self.reason = reason
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"invalid job {self.field} {self.value!r:.200}: {self.reason}"


class JobConflict(StorageError):
    """A job-store write that would break a uniqueness rule: a job ``job_id``
    that is already stored, or a dead job requeued while another live job
    holds its dedup key. Nothing was changed."""

    def __init__(self, job_id: str, reason: str) -> None:
        self.job_id = job_id
        self.reason = reason
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"job {self.job_id!r}: {self.reason}"


class SchemaVersionError(StorageError):
    """A database whose schema is newer than this trio-kernel knows (written
    by a later release): refused at open, before anything is read or written,
    instead of failing later on a missing or changed column.

    Carries the database ``location``, the ``found`` version and the newest
    ``supported`` one.
    """

    def __init__(self, location: str, found: int, supported: int) -> None:
        self.location = location
        self.found = found
        self.supported = supported
        super().__init__(str(self))

    def __str__(self) -> str:
        return (
            f"database {self.location} has schema version {self.found}, but this trio-kernel "
            f"supports versions up to {self.supported}: it was written by a newer release; "
            f"upgrade trio-kernel (or open a copy made before the upgrade)"
        )


class SchemaOutdated(StorageError):
    """A database whose schema is older than this trio-kernel needs (or has
    none yet): refused at open, before anything is read or written. Shared
    databases are not migrated behind the operator's back; ``kernel db
    upgrade URL`` applies the missing migrations.

    Carries the database ``location``, the ``found`` version (0: no schema)
    and the ``required`` one.
    """

    def __init__(self, location: str, found: int, required: int) -> None:
        self.location = location
        self.found = found
        self.required = required
        super().__init__(str(self))

    def __str__(self) -> str:
        found = "no trio-kernel schema" if self.found == 0 else f"schema version {self.found}"
        return (
            f"database {self.location} has {found}, but this trio-kernel needs version "
            f"{self.required}: run `kernel db upgrade URL` to apply the migrations"
        )


# --- the work queue (kernel.jobs.queue) -------------------------------------------


class UnknownTask(KernelError, LookupError):
    """A job names a ``task`` that was never registered with the queue; the
    ``known`` task names are listed so the message says what exists."""

    def __init__(self, task: object, known: list[str]) -> None:
        self.task = task
        self.known = known
        super().__init__(str(self))

    def __str__(self) -> str:
        known = ", ".join(repr(name) for name in self.known) or "none"
        return (
            f"unknown task {self.task!r}: register it with JobQueue.register or "
            f"@queue.task first (registered: {known})"
        )


class DuplicateTask(KernelError, ValueError):
    """A task ``name`` registered twice with the queue."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"task {self.name!r} is already registered"


class JobTimedOut(KernelError):
    """One attempt of job ``job_id`` (task ``task``) ran longer than its
    ``timeout`` (seconds) and was cancelled: a failure, retried like any other."""

    def __init__(self, job_id: str, task: str, timeout: float) -> None:
        self.job_id = job_id
        self.task = task
        self.timeout = timeout
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"job {self.job_id} ({self.task}) timed out after {self.timeout:g}s"


# --- the runtime (kernel.runtime) --------------------------------------------


class KernelNotRunning(KernelError, RuntimeError):
    """A host handle was used while its kernel was not running: before
    `KernelThread.start`, after a stop, or after the kernel ended on an error
    (which is then the ``__cause__``)."""


class NotFound(KernelError, LookupError):
    """An operator action (`KernelControl`, the HTTP API) named a ``kind`` of
    thing (``"plugin"``, ``"schedule"``, ``"queue"``, ``"job"``) that this
    kernel does not have under ``name``; ``known`` lists what it has, when
    that list is short enough to help."""

    def __init__(self, kind: str, name: str, known: tuple[str, ...] = ()) -> None:
        self.kind = kind
        self.name = name
        self.known = known
        super().__init__(str(self))

    def __str__(self) -> str:
        hint = f" (known: {', '.join(self.known)})" if self.known else ""
        return f"no {self.kind} named {self.name!r}{hint}"


class StatusUnavailable(KernelError):
    """No kernel answers at the status socket path."""


class StatusSocketError(KernelError):
    """The status socket cannot be opened at its path: a live kernel answers
    there, the path is a file that is not a socket, or its folder is missing.
    Carries the ``path`` and the ``reason``; nothing at the path is touched."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"cannot use {self.path} as the status socket: {self.reason}"


class PayloadError(KernelError, TypeError):
    """A stored argument does not fit the task's annotated parameter (the
    task changed since the job was enqueued, or the job was written by
    hand). Retrying cannot help: the job goes to the dead letters."""
