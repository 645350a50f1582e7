"""Dead-letter triage: filter dead letters by task, reason, error type and time; group them.

Called by the web console's DLQ browser and by ``workerfleet dlq ls|replay|purge|summary``. Reads
through the :class:`~worker_runtime.brokers.base.DeadLetters` protocol only (its paged,
read-only list), so it works on every broker: a filter is applied here, in Python, over at most
:data:`SCAN_LIMIT` dead letters, newest first, so a huge DLQ never makes one request unbounded;
:class:`FilteredPage` says when the scan stopped early.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

from worker_runtime.brokers import base

SCAN_LIMIT = 10_000
"""Most dead letters one filtered read walks through (newest first)."""

PAGE = 500
"""Dead letters read per round trip while filtering."""


@dataclass(frozen=True)
class DeadLetterFilter:
    """Which dead letters a triage command means; an empty filter matches every one.

    ``task`` and ``reason`` match exactly; ``error`` matches the last failure's error type
    exactly or as its last dotted part (``ValueError`` matches ``builtins.ValueError``);
    ``since``/``until`` bound the dead-lettering time (epoch seconds).
    """

    task: str | None = None
    reason: str | None = None
    error: str | None = None
    since: float | None = None
    until: float | None = None

    @property
    def is_empty(self) -> bool:
        return all(v is None for v in (self.task, self.reason, self.error, self.since, self.until))

    def matches(self, d: base.DeadLetter) -> bool:
        """Whether ``d`` is one of the dead letters this filter means."""
        if self.task is not None and d.task != self.task:
            return False
        if self.reason is not None and d.reason != self.reason:
            return False
        if self.error is not None:
            error = error_type_of(d)
            if error != self.error and error.rsplit(".", 1)[-1] != self.error:
                return False
        if self.since is not None and d.dead_lettered_at < self.since:
            return False
        return not (self.until is not None and d.dead_lettered_at > self.until)


def error_type_of(d: base.DeadLetter) -> str:
    """The error type of the dead letter's last failure ("" when it has no failure record)."""
    return d.history[-1].error_type if d.history else ""


@dataclass(frozen=True)
class FilteredPage:
    """One page of matching dead letters, with how many matched in the scanned part."""

    items: tuple[base.DeadLetter, ...]
    matched: int
    scanned: int
    total: int
    complete: bool
    """False when the scan stopped at SCAN_LIMIT before the DLQ's end (counts are a floor)."""


async def fetch_matching_dead_letters(
    letters: base.DeadLetters,
    where: DeadLetterFilter,
    *,
    offset: int = 0,
    limit: int = 50,
    scan_limit: int = SCAN_LIMIT,
) -> FilteredPage:
    """The ``offset``/``limit`` page of the dead letters matching ``where``, newest first."""
    total = await letters.count_dead_letters()
    items: list[base.DeadLetter] = []
    matched = scanned = 0
    while scanned < min(total, scan_limit):
        batch = await letters.list_dead_letters(
            offset=scanned, limit=min(PAGE, scan_limit - scanned)
        )
        if not batch:
            break
        scanned += len(batch)
        for d in batch:
            if not where.matches(d):
                continue
            if offset <= matched < offset + limit:
                items.append(d)
            matched += 1
        if where.is_empty and len(items) >= limit:
            # no filter: the count is the DLQ's size, nothing more to learn by reading on
            matched, scanned = total, total
            break
    return FilteredPage(
        items=tuple(items),
        matched=matched,
        scanned=scanned,
        total=total,
        complete=scanned >= total,
    )


async def fetch_matching_ids(
    letters: base.DeadLetters, where: DeadLetterFilter, *, scan_limit: int = SCAN_LIMIT
) -> list[str]:
    """Every matching job id (newest first) within the scan limit: what replay/purge act on."""
    page = await fetch_matching_dead_letters(
        letters, where, offset=0, limit=scan_limit, scan_limit=scan_limit
    )
    return [d.job_id for d in page.items]


@dataclass(frozen=True)
class SummaryRow:
    """How many dead letters share one reason and error type."""

    reason: str
    error_type: str
    count: int
    tasks: tuple[str, ...]


def build_summary(items: list[base.DeadLetter] | tuple[base.DeadLetter, ...]) -> list[SummaryRow]:
    """Group dead letters by (reason, error type), largest group first (pure)."""
    counts: collections.Counter[tuple[str, str]] = collections.Counter()
    tasks: dict[tuple[str, str], set[str]] = collections.defaultdict(set)
    for d in items:
        key = (d.reason, error_type_of(d))
        counts[key] += 1
        tasks[key].add(d.task or "?")
    return [
        SummaryRow(reason=r, error_type=e, count=n, tasks=tuple(sorted(tasks[(r, e)])))
        for (r, e), n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    ]


_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


class InvalidTime(ValueError):
    """A time bound that is neither a duration (``90s``, ``15m``, ``2h``, ``3d``) nor a date."""


def seconds_of_duration(text: str) -> float | None:
    """Seconds of a duration with a unit (``90s``, ``15m``, ``2h``, ``3d``); None otherwise."""
    text = text.strip()
    unit = _UNITS.get(text[-1:].lower()) if text else None
    if unit is not None and text[:-1].replace(".", "", 1).isdigit():
        return float(text[:-1]) * unit
    return None


def parse_time_bound(text: str, now: float) -> float:
    """Epoch seconds of ``text``: a duration ago (``2h``) or an ISO date-time (UTC if naive)."""
    import datetime as dt

    text = text.strip()
    ago = seconds_of_duration(text)
    if ago is not None:
        return now - ago
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise InvalidTime(
            f"{text!r} is neither a duration (90s, 15m, 2h, 3d) nor an ISO date-time"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


REASON_MEANINGS: dict[str, str] = {
    "max_attempts": "it failed on every attempt it was allowed (its failures are listed below)",
    "max_deliveries": (
        "its deliveries ended without a result {lost} time(s): the worker running it died "
        "(a crash, an OOM kill, SIGKILL) or stopped renewing its lease; a job that kills its "
        "worker is held here instead of taking down the next one"
    ),
    "non_retryable": "its handler raised an error the task marks not to retry (or Reject)",
    "unknown_task": "no task of that name is registered on the worker that fetched it",
    "invalid_payload": "its payload did not validate against the task's payload model",
    "invalid_envelope": "the stored job is not a valid job envelope",
    "unparseable_json": "the stored job is not JSON",
    "unknown_schema_version": "the stored job has an envelope version this runtime cannot read",
    "expired": "its deadline (ttl or expires_at) passed before it could start",
    "unknown_event_version": (
        "its event has a version the subscription cannot bring to the one its handler reads"
    ),
}
"""What each :class:`~worker_runtime.brokers.base.DeadLetterReason` means, for a person."""


def explain_reason(d: base.DeadLetter) -> str:
    """One sentence saying why ``d`` is a dead letter (its reason, in words)."""
    meaning = REASON_MEANINGS.get(d.reason)
    if meaning is None:
        return f"reason {d.reason!r}"
    return meaning.format(lost=d.lost)


def describe_last_error(d: base.DeadLetter) -> str:
    """The last failure as ``Type: message``; for a job with none recorded whose deliveries
    ended without a result (a poison job), how many did."""
    if d.history:
        last = d.history[-1]
        return f"{last.error_type}: {last.message}"
    if d.lost:
        return f"(no result from {d.lost} deliveries: worker died?)"
    return ""
