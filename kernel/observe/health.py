"""Health: what each component reports, the kernel-wide aggregate, and the
monitor that checks periodically and tells the notifier when things change.

A plugin (or a kernel part: storage, bus, scheduler) registers a check: a
sync or async callable that returns a `HealthReport`, a `Status` or a bool.
`aggregate` is the pure policy: the worst status wins and the reasons of the
components that are not healthy are listed, each prefixed with its component
name. `HealthMonitor` is the thin plumbing: it runs every check concurrently
under a timeout, contains a check that raises or hangs, and calls
``on_transition`` only when a component's status, or the overall one,
changes, recovery included. Spring Boot's actuator health groups and the
Kubernetes liveness/readiness split are the prior art for the three levels
and the aggregation.
"""

from __future__ import annotations

import enum
import functools
import inspect
import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final, NoReturn, TypeAlias

import attrs
import trio

from kernel.errors import HealthCheckError

__all__ = [
    "OVERALL",
    "CheckResult",
    "HealthCheck",
    "HealthMonitor",
    "HealthReport",
    "HealthSnapshot",
    "HealthTransition",
    "Status",
    "aggregate",
]

logger = logging.getLogger("kernel.health")

#: The name a `HealthTransition` of the aggregate carries; no check may use it.
OVERALL: Final = "overall"


@functools.total_ordering
class Status(enum.Enum):
    """Health levels, ordered ``HEALTHY < DEGRADED < UNHEALTHY`` so that
    ``max()`` picks the worst. The values are what JSON and notifications show."""

    HEALTHY = "healthy"
    #: Working, but a user would notice (a backlog, a fallback, retries).
    DEGRADED = "degraded"
    #: Not doing its job.
    UNHEALTHY = "unhealthy"

    @property
    def severity(self) -> int:
        return _SEVERITY[self]

    def __lt__(self, other: object) -> bool:  # total_ordering derives the rest
        if not isinstance(other, Status):
            return NotImplemented
        return _SEVERITY[self] < _SEVERITY[other]


_SEVERITY: Final = {Status.HEALTHY: 0, Status.DEGRADED: 1, Status.UNHEALTHY: 2}


def _to_reasons(value: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    # A bare string is one reason, never a tuple of characters.
    if isinstance(value, str):
        return (value,)
    return tuple(value)


def _check_reasons(_instance: object, _attribute: object, value: tuple[object, ...]) -> None:
    for reason in value:
        if not isinstance(reason, str):
            raise TypeError(f"health reasons must be str, got {reason!r}")


@attrs.frozen
class HealthReport:
    """One component's (or the aggregate's) health: a `Status`, the reasons a
    human reads, and optional JSON-able ``details`` for dashboards."""

    status: Status = attrs.field(validator=attrs.validators.instance_of(Status))
    reasons: tuple[str, ...] = attrs.field(
        default=(), converter=_to_reasons, validator=_check_reasons
    )
    details: Mapping[str, Any] = attrs.field(factory=dict, converter=dict, hash=False)

    @classmethod
    def healthy(cls, *reasons: str, **details: Any) -> HealthReport:
        return cls(Status.HEALTHY, reasons, details)

    @classmethod
    def degraded(cls, *reasons: str, **details: Any) -> HealthReport:
        return cls(Status.DEGRADED, reasons, details)

    @classmethod
    def unhealthy(cls, *reasons: str, **details: Any) -> HealthReport:
        return cls(Status.UNHEALTHY, reasons, details)

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status.value,
            "reasons": list(self.reasons),
            "details": dict(self.details),
        }


_HEALTHY: Final = HealthReport(Status.HEALTHY)


def aggregate(reports: Mapping[str, HealthReport]) -> HealthReport:
    """The kernel-wide report: the worst status wins (none at all is healthy).

    Only components that are not healthy contribute reasons, worst first and
    otherwise in mapping order, each as ``"<component>: <reason>"``; one
    that gave no reason contributes ``"<component>: <status>"`` so the
    aggregate always says why it is not healthy.
    """
    if not reports:
        return _HEALTHY
    status = max(report.status for report in reports.values())
    ailing = sorted(
        ((name, report) for name, report in reports.items() if report.status > Status.HEALTHY),
        key=lambda item: -item[1].status.severity,
    )
    reasons: list[str] = []
    for name, report in ailing:
        if report.reasons:
            reasons.extend(f"{name}: {reason}" for reason in report.reasons)
        else:
            reasons.append(f"{name}: {report.status.value}")
    return HealthReport(status, tuple(reasons))


CheckResult: TypeAlias = HealthReport | Status | bool
#: A health check: sync or async, returning a report, a bare status, or a bool
#: (``True`` healthy, ``False`` unhealthy).
HealthCheck: TypeAlias = Callable[[], CheckResult | Awaitable[CheckResult]]


@attrs.frozen
class HealthTransition:
    """A status change the monitor reports: ``name`` is a component, or
    `OVERALL` for the aggregate; ``report`` is the new report (its reasons
    say why). A component seen for the first time starts from healthy."""

    name: str
    old: Status
    new: Status
    report: HealthReport

    @property
    def is_overall(self) -> bool:
        return self.name == OVERALL

    @property
    def is_recovery(self) -> bool:
        return self.new < self.old


@attrs.frozen
class HealthSnapshot:
    """The latest results: the aggregate and each component's report."""

    overall: HealthReport
    components: Mapping[str, HealthReport]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: ``{"status", "reasons", "components": {name: report}}``."""
        return {
            "status": self.overall.status.value,
            "reasons": list(self.overall.reasons),
            "components": {name: report.to_dict() for name, report in self.components.items()},
        }


@attrs.frozen
class _Registered:
    check: HealthCheck
    timeout: float


def _positive_timeout(_instance: object, _attribute: object, value: float) -> None:
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"timeout must be a positive number of seconds, got {value!r}")


TransitionCallback: TypeAlias = Callable[[HealthTransition], Awaitable[None]]


@attrs.define(eq=False)
class HealthMonitor:
    """Runs the registered checks, keeps their last reports, and reports
    transitions to ``on_transition`` (the kernel wires it to the notifier).

    Checks run concurrently, each under its own timeout (``default_timeout``
    unless given at registration). A check that raises is unhealthy with the
    exception as its reason; one that outlives its timeout is unhealthy with
    ``"check timed out after Xs"``. A sync check runs on the trio thread and
    cannot be interrupted, so it must not block; make a slow check async.
    An ``on_transition`` that raises is logged and does not stop the monitor.
    """

    on_transition: TransitionCallback | None = None
    default_timeout: float = attrs.field(default=10.0, kw_only=True, validator=_positive_timeout)
    _checks: dict[str, _Registered] = attrs.field(factory=dict, init=False)
    _reports: dict[str, HealthReport] = attrs.field(factory=dict, init=False)
    _overall_status: Status = attrs.field(default=Status.HEALTHY, init=False)

    def register(self, name: str, check: HealthCheck, *, timeout: float | None = None) -> None:
        """Add the check ``name``; `HealthCheckError` if the name is taken."""
        if not isinstance(name, str) or not name:
            raise HealthCheckError(str(name), "a check needs a non-empty name")
        if name == OVERALL:
            raise HealthCheckError(name, "this name is reserved for the aggregate")
        if name in self._checks:
            raise HealthCheckError(name, "a check with this name is already registered")
        if not callable(check):
            raise HealthCheckError(name, f"the check must be callable, got {check!r}")
        chosen = self.default_timeout if timeout is None else timeout
        try:
            _positive_timeout(None, None, chosen)
        except ValueError as exc:
            raise HealthCheckError(name, str(exc)) from None
        self._checks[name] = _Registered(check, chosen)

    def unregister(self, name: str) -> None:
        """Remove the check ``name`` and its last report (no-op if absent).

        No transition is reported for the removed component; the aggregate
        without it is compared at the next check.
        """
        self._checks.pop(name, None)
        self._reports.pop(name, None)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._checks)

    def current(self) -> HealthSnapshot:
        """The last report of every registered component that has been
        checked, and their aggregate (healthy before any check)."""
        components = {name: self._reports[name] for name in self._checks if name in self._reports}
        return HealthSnapshot(aggregate(components), components)

    async def check_all(self) -> HealthSnapshot:
        """Run every check now, record the results, report transitions."""
        checks = dict(self._checks)
        results: dict[str, HealthReport] = {}

        async def run_one(name: str, registered: _Registered) -> None:
            results[name] = await _run_check(registered)

        async with trio.open_nursery() as nursery:
            for name, registered in checks.items():
                nursery.start_soon(run_one, name, registered)

        # Record and diff without an await in between, so a concurrent
        # check_all can never report the same transition twice.
        transitions: list[HealthTransition] = []
        for name, report in results.items():
            if self._checks.get(name) is not checks[name]:
                continue  # unregistered (or replaced) while it ran
            old = self._reports.get(name, _HEALTHY).status
            self._reports[name] = report
            if report.status != old:
                transitions.append(HealthTransition(name, old, report.status, report))
        snapshot = self.current()
        if snapshot.overall.status != self._overall_status:
            transitions.append(
                HealthTransition(
                    OVERALL, self._overall_status, snapshot.overall.status, snapshot.overall
                )
            )
            self._overall_status = snapshot.overall.status

        for transition in transitions:
            await self._notify(transition)
        return snapshot

    async def run(
        self, interval: float, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> NoReturn:
        """Check every ``interval`` seconds, forever.

        Checks start at fixed-rate instants (0, interval, 2·interval...);
        when a round overruns, the next starts at once. ``task_status`` is
        started after the first round, so ``await nursery.start(monitor.run,
        30)`` returns with `current` already filled in.
        """
        _positive_timeout(None, None, interval)
        deadline = trio.current_time()
        await self.check_all()
        task_status.started()
        while True:
            deadline = max(deadline + interval, trio.current_time())
            await trio.sleep_until(deadline)
            await self.check_all()

    async def _notify(self, transition: HealthTransition) -> None:
        if self.on_transition is None:
            return
        try:
            await self.on_transition(transition)
        except Exception:
            logger.exception("health transition callback failed for %s", transition)


async def _run_check(registered: _Registered) -> HealthReport:
    """One check, contained: whatever it does, the answer is a report."""
    with trio.move_on_after(registered.timeout) as scope:
        try:
            result = registered.check()
            if inspect.isawaitable(result):
                result = await result
        except Exception as exc:
            return HealthReport.unhealthy(f"check raised {type(exc).__name__}: {exc}")
    if scope.cancelled_caught:
        return HealthReport.unhealthy(f"check timed out after {registered.timeout:g}s")
    return _to_report(result)


def _to_report(result: object) -> HealthReport:
    if isinstance(result, HealthReport):
        return result
    if isinstance(result, bool):
        return _HEALTHY if result else HealthReport.unhealthy("check returned False")
    if isinstance(result, Status):
        return HealthReport(result)
    return HealthReport.unhealthy(
        f"check returned {type(result).__name__}, expected HealthReport, Status or bool"
    )
