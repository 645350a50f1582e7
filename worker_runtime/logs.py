"""Structured logs for worker processes: one JSON object per line, carrying job and correlation ids.

The worker calls :func:`configure` once at start-up; the worker loop sets the current job with
:func:`bind_job` (a context variable, so every log record emitted while a handler runs — in its
asyncio task or in its worker thread — carries ``job_id``, ``task``, ``correlation_id`` and
``causation_id`` without the handler passing anything around). Handlers log through ``ctx.logger``.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TextIO

ROOT_LOGGER = "workerfleet"


class JobLogFields(Protocol):
    """What a log record written on behalf of a job carries (read only when a record is made)."""

    @property
    def job_id(self) -> str: ...
    @property
    def task_name(self) -> str: ...
    @property
    def correlation_id(self) -> str | None: ...
    @property
    def attempt(self) -> int: ...
    @property
    def queue(self) -> str: ...


@dataclass(frozen=True)
class JobLogContext:
    """A plain :class:`JobLogFields` (the worker binds its own held-job record instead)."""

    job_id: str
    task_name: str
    correlation_id: str | None
    attempt: int
    queue: str


_current_job: contextvars.ContextVar[JobLogFields | None] = contextvars.ContextVar(
    "workerfleet_current_job", default=None
)

# LogRecord attributes that are not user "extra" fields.
_RESERVED = frozenset(
    vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None)).keys()
    | {"message", "asctime", "taskName"}
)


def bind_job(context: JobLogFields | None) -> contextvars.Token[JobLogFields | None]:
    """Make ``context`` the current job for log records in this context; returns a reset token."""
    return _current_job.set(context)


def unbind_job(token: contextvars.Token[JobLogFields | None]) -> None:
    """Undo :func:`bind_job`."""
    _current_job.reset(token)


def current_job() -> JobLogFields | None:
    """The job whose handler is running in this context, if any."""
    return _current_job.get()


def build_log_record_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The JSON object written for one log record (pure; exposed for tests)."""
    fields: dict[str, Any] = {
        "ts": round(record.created, 6),
        "level": record.levelname.lower(),
        "logger": record.name,
        "msg": record.getMessage(),
    }
    job = _current_job.get()
    if job is not None:
        fields["job_id"] = job.job_id
        fields["task"] = job.task_name
        fields["attempt"] = job.attempt
        fields["queue"] = job.queue
        if job.correlation_id is not None:
            fields["correlation_id"] = job.correlation_id
        # the job or event that caused this one (events.CAUSATION_HEADER), when the job has one
        causation = getattr(job, "causation_id", None)
        if causation is not None:
            fields["causation_id"] = causation
    fields.update(_extra_fields(record))
    if record.exc_info and record.exc_info[0] is not None:
        fields["exc_type"] = record.exc_info[0].__name__
        fields["traceback"] = logging.Formatter().formatException(record.exc_info)
    return fields


def _extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    # What the caller attached (``extra=``, the adapter's static fields), JSON-ready.
    fields: dict[str, Any] = {}
    for key, value in record.__dict__.items():
        if key in _RESERVED or key.startswith("_"):
            continue
        if _is_plain(value):
            fields[key] = value
        elif len(text := str(value)) <= _OBJECT_TEXT_MAX:
            fields[key] = text
    return fields


_PLAIN_DEPTH = 3
# Other objects are written as str() only when that is short: libraries attach whole objects to
# their records (kopf: its settings object, ~2 KB on every line), and a log line carries facts.
_OBJECT_TEXT_MAX = 120


def _is_plain(value: Any, depth: int = 0) -> bool:
    """True for JSON's own values (nested at most three deep)."""
    if value is None or isinstance(value, str | int | float | bool):
        return True
    if depth >= _PLAIN_DEPTH:
        return False
    if isinstance(value, list | tuple):
        return all(_is_plain(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_plain(v, depth + 1) for k, v in value.items())
    return False


class JsonFormatter(logging.Formatter):
    """One JSON object per line; values that JSON cannot encode are written with ``str()``."""

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(build_log_record_fields(record), default=str, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    """Human-readable lines for a terminal, still naming the job when there is one.

    The record's fields follow the message as ``key=value`` (strings with spaces or quotes
    quoted): "fetch failed; retrying" alone does not say what failed or when it tries again.
    """

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        job = _current_job.get()
        where = f" [{job.task_name} {job.job_id}]" if job is not None else ""
        # the message and the job's names may hold what a producer sent: one line, no escapes
        message = escape_controls(f"{where}: {record.getMessage()}")
        line = f"{stamp} {record.levelname.lower():<7} {record.name}{message}"
        pairs = " ".join(f"{k}={encode_text_value(v)}" for k, v in _extra_fields(record).items())
        if pairs:
            line += " " + pairs
        if record.exc_info and record.exc_info[0] is not None:
            line += "\n" + self.formatException(record.exc_info)
        return line


CONTROL_ESCAPES = {
    **{code: f"\\x{code:02x}" for code in (*range(0x20), *range(0x7F, 0xA0))},
    ord("\t"): "\\t",
    ord("\n"): "\\n",
    ord("\r"): "\\r",
}
"""The C0 and C1 control characters and DEL, as :func:`escape_controls` writes them."""

_JSON_C1_ESCAPES = {code: f"\\u{code:04x}" for code in range(0x7F, 0xA0)}
# json.dumps(ensure_ascii=False) escapes C0 itself but writes DEL and C1 (0x9b is a terminal's
# CSI, like ESC [) as they are.


def escape_controls(text: str) -> str:
    """``text`` with every control character written as an escape (``\\x1b``, ``\\n``): a job
    id, task name or error text comes from whoever enqueued the job, and written raw to a
    terminal an escape sequence recolours it or moves its cursor, and a newline or carriage
    return fakes a line. Printable Unicode is kept as is."""
    return text.translate(CONTROL_ESCAPES)


def encode_text_value(value: Any) -> str:
    """A field's value in a text log line: bare when it is one plain printable word, else
    JSON-quoted, with every control character escaped (:func:`escape_controls`)."""
    if isinstance(value, str):
        plain = value.isprintable() and value and not any(c.isspace() or c in '"=\\' for c in value)
        if plain:
            return value
        return json.dumps(value, ensure_ascii=False).translate(_JSON_C1_ESCAPES)
    text = json.dumps(value, ensure_ascii=False, default=str, separators=(",", ":"))
    return text.translate(_JSON_C1_ESCAPES)


def configure(level: str = "info", fmt: str = "json", stream: TextIO | None = None) -> None:
    """Install the workerfleet handler on the root logger (idempotent: replaces an earlier one)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_workerfleet", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler._workerfleet = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper())


def get_logger(name: str = "", **static: Any) -> logging.LoggerAdapter[logging.Logger]:
    """A logger under ``workerfleet.`` whose records carry ``static`` fields as JSON keys."""
    full = f"{ROOT_LOGGER}.{name}" if name else ROOT_LOGGER
    return _ExtraAdapter(logging.getLogger(full), static)


class _ExtraAdapter(logging.LoggerAdapter[logging.Logger]):
    """Merges static fields with per-call ``extra=`` instead of replacing them."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        extra: Mapping[str, Any] = self.extra or {}
        kwargs["extra"] = {**extra, **(kwargs.get("extra") or {})}
        return msg, kwargs
