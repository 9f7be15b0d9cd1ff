"""Jobs finished and failed per minute over the last hour, and its SVG chart.

The kernel keeps totals (`kernel.Metrics`: ``job_run_seconds`` counts every
finished attempt, ``job_failures`` the failed ones), not a history; the
dashboard's chart needs one. `Activity` samples the totals (every few
seconds, and whenever the chart is drawn) and adds each difference to the
minute it was seen in, keeping `MINUTES` of them: what Flower and Sidekiq's
dashboard keep for their throughput graphs. It counts attempts of this
process since the HTTP server started.
"""

from __future__ import annotations

from collections import deque
from typing import Final

import attrs

from kernel import Metrics

__all__ = ["MINUTES", "Activity", "Minute", "chart_svg", "job_totals"]

MINUTES: Final = 60


@attrs.define
class Minute:
    """One minute's counts; ``start`` is its first second (Unix time)."""

    start: int
    finished: int = 0
    failed: int = 0


def job_totals(metrics: Metrics) -> tuple[int, int]:
    """(attempts finished, attempts failed) so far, summed over tasks."""
    snapshot = metrics.snapshot()
    runs = snapshot.get("job_run_seconds", {"series": []})["series"]
    failures = snapshot.get("job_failures", {"series": []})["series"]
    finished = sum(int(row["count"]) for row in runs)
    failed = sum(int(row["value"]) for row in failures)
    return finished, failed


class Activity:
    """Per-minute counts from sampled totals (see the module docstring)."""

    def __init__(self, minutes: int = MINUTES) -> None:
        self.minutes: deque[Minute] = deque(maxlen=minutes)
        self._last: tuple[int, int] = (0, 0)

    def sample(self, now: float, finished: int, failed: int) -> None:
        """Record the totals seen at ``now`` (Unix time)."""
        start = int(now) - int(now) % 60
        current = self.minutes[-1] if self.minutes else None
        if current is None or current.start < start:
            current = Minute(start)
            self.minutes.append(current)
        last_finished, last_failed = self._last
        current.finished += max(0, finished - last_finished)
        current.failed += max(0, failed - last_failed)
        self._last = (max(finished, last_finished), max(failed, last_failed))

    def series(self, now: float) -> list[Minute]:
        """The last `MINUTES` minutes up to ``now``, oldest first, with
        zeros for minutes nothing was sampled in."""
        end = int(now) - int(now) % 60
        size = self.minutes.maxlen or MINUTES
        by_start = {minute.start: minute for minute in self.minutes}
        return [
            by_start.get(start, Minute(start))
            for start in range(end - 60 * (size - 1), end + 1, 60)
        ]


def chart_svg(series: list[Minute], *, width: int = 1100, height: int = 170) -> str:
    """Bars of finished attempts per minute, failed ones in red over them;
    plain SVG the page inlines (no chart library)."""
    top = max([minute.finished for minute in series] + [1])
    left, bottom = 36, 20
    plot_w, plot_h = width - left - 8, height - bottom - 8
    step = plot_w / max(len(series), 1)
    bar = max(step - 2, 1)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'class="chart" role="img" aria-label="jobs finished and failed per minute, last hour">',
        f'<line x1="{left}" y1="{8 + plot_h}" x2="{width - 8}" y2="{8 + plot_h}" class="axis"/>',
        f'<text x="{left - 4}" y="14" class="tick" text-anchor="end">{top}</text>',
        f'<text x="{left - 4}" y="{8 + plot_h}" class="tick" text-anchor="end">0</text>',
        f'<text x="{left}" y="{height - 4}" class="tick">-60 min</text>',
        f'<text x="{width - 8}" y="{height - 4}" class="tick" text-anchor="end">now</text>',
    ]
    for index, minute in enumerate(series):
        x = left + index * step + 1
        for value, css in ((minute.finished, "finished"), (minute.failed, "failed")):
            if value:
                h = plot_h * value / top
                parts.append(
                    f'<rect x="{x:.1f}" y="{8 + plot_h - h:.1f}" width="{bar:.1f}" '
                    f'height="{h:.1f}" class="{css}"><title>{value} {css}</title></rect>'
                )
    parts.append("</svg>")
    return "".join(parts)
