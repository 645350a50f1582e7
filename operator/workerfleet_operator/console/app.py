"""The web console: pools, queue detail, finding a job by id, DLQ browser, dead-letter detail,
replay, purge and cancelling a job that has not started.

Built by :func:`build_app` for ``workerfleet console`` (:mod:`workerfleet_operator.console.cli`).
Server-rendered (Starlette + Jinja2, autoescaped templates in ``templates/``), no JavaScript. Every
page needs authentication (:mod:`.security`); writes exist only when the console was started with
writes enabled, go through a confirmation page listing exactly the jobs they will touch, and carry
the CSRF token. Queue data is read only through the runtime's read APIs
(:mod:`worker_runtime.brokers.redis.stats`, :mod:`worker_runtime.brokers.redis.dlq`,
:mod:`worker_runtime.brokers.redis.inflight`, :mod:`worker_runtime.triage`); writes are the
runtime's own replay, purge and cancel.

Every write attempt that reaches a write route leaves one INFO line on the
``workerfleet.console.audit`` logger (:func:`build_audit_fields`): the action, the queue, who
(:func:`security.describe_identity`, never a token, cookie or CSRF token), the client address,
the ids asked (the first :data:`AUDIT_IDS_SHOWN`, printable) and what was done, or why it was
refused or failed.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jinja2
from starlette.applications import Starlette
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from worker_runtime import errors, logs
from worker_runtime.brokers import base
from worker_runtime.brokers.redis import stats
from workerfleet_operator.console import security, sources

logger = logging.getLogger("workerfleet.console")
audit_logger = logging.getLogger("workerfleet.console.audit")
"""One INFO line per write attempt: the record of who replayed, purged or cancelled what."""

AUDIT_IDS_SHOWN = 50
"""Ids an audit line names at most (it says how many more there were)."""
AUDIT_TEXT_MAX = 200
"""Characters of one id (or other text from the request) an audit line keeps at most."""

ACTION_LIMIT = 1000
"""Most dead letters one replay or purge touches (the confirmation page lists them)."""
FORM_FIELDS_MAX = ACTION_LIMIT + 10
"""Fields a posted form may have: a confirmation page's ids and its few others (Starlette's
default, 1000, refused the form of a 1000-id confirmation page with a bare 400)."""

DLQ_ACTIONS = ("replay", "purge")
"""The writes of ``/dlq/{action}``: they act on dead letters."""
JOB_ACTIONS = ("cancel",)
"""The writes of ``/job/{action}``: they act on live jobs named by id."""
CANCELLABLE = (base.JobState.WAITING, base.JobState.SCHEDULED)
"""The states a job page offers Cancel for: a job that has not started (a running, dead-lettered
or finished one would be refused by the broker anyway)."""

PAGE_SIZE = 50

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",  # no-referrer would make forms send "Origin: null"
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


@dataclass(frozen=True)
class ConsoleSettings:
    """How one console process behaves."""

    auth: security.AuthSettings
    allow_writes: bool = False
    title: str = "workerfleet"


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _number(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def _build_environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("workerfleet_operator.console", "templates"),
        autoescape=True,  # every value from a job or an error is text, never markup
        undefined=jinja2.StrictUndefined,
    )
    env.filters["age"] = stats.format_age
    env.filters["when"] = _when
    env.filters["number"] = _number
    # a job id that is not UTF-8 (lone surrogates) goes into a link as its exact bytes
    env.filters["q"] = lambda params: urllib.parse.urlencode(
        {k: v for k, v in params.items() if v not in (None, "")}, errors="surrogateescape"
    )
    env.filters["form_id"] = quote_job_id
    return env


def quote_job_id(job_id: str) -> str:
    """A job id as a form field carries it: percent-escaped bytes (:func:`unquote_job_id`).

    A form can only send UTF-8 text, and a job id that is not UTF-8 must still reach the purge
    or the replay as its exact bytes."""
    return urllib.parse.quote(job_id, safe="", errors="surrogateescape")


def unquote_job_id(text: str) -> str:
    """The job id a form field of :func:`quote_job_id` carries."""
    return urllib.parse.unquote(text, errors="surrogateescape")


def _query_values(request: Request, name: str) -> list[str]:
    """The query's ``name`` values with bytes that are not UTF-8 kept (as lone surrogates, as
    the runtime keeps job ids): Starlette's own parse replaces them, and the id then names no
    entry."""
    query = request.scope.get("query_string", b"").decode("latin-1")
    pairs = urllib.parse.parse_qsl(query, keep_blank_values=True, errors="surrogateescape")
    return [value for key, value in pairs if key == name]


def _printable(text: str) -> str:
    """``text`` for a page: bytes that were not UTF-8 (lone surrogates) shown escaped, ``\\xff``,
    as the command line shows them, instead of failing the whole page."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _audit_text(text: str) -> str:
    """``text`` from a request as an audit line keeps it: printable (control characters
    escaped, as a terminal reading the log needs), and bounded in length."""
    shown = logs.escape_controls(_printable(text))
    if len(shown) <= AUDIT_TEXT_MAX:
        return shown
    return f"{shown[:AUDIT_TEXT_MAX]}...({len(shown)} chars)"


def build_audit_fields(
    action: str,
    outcome: str,
    *,
    who: str,
    client: str,
    reason: str | None = None,
    pool: str | None = None,
    queue: str | None = None,
    ids: Sequence[str] | None = None,
    counts: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """The fields of one write's audit line (pure), in the order the line shows them.

    ``ids``: every id the request named; the line keeps the first :data:`AUDIT_IDS_SHOWN`
    (printable, each bounded) and says how many more there were, so a 10,000-id form makes
    a line of bounded length. ``None``: the ids were not read (a request not signed in)."""
    fields: dict[str, Any] = {"action": _audit_text(action), "outcome": outcome}
    if reason is not None:
        fields["reason"] = reason
    if pool is not None:
        fields["pool"] = _audit_text(pool)
    if queue is not None:
        fields["queue"] = _audit_text(queue)
    fields["who"] = who
    fields["client"] = client
    if ids is not None:
        fields["asked"] = len(ids)
    fields.update(counts or {})
    if ids is not None:
        fields["ids"] = [_audit_text(i) for i in ids[:AUDIT_IDS_SHOWN]]
        if len(ids) > AUDIT_IDS_SHOWN:
            fields["more_ids"] = len(ids) - AUDIT_IDS_SHOWN
    return fields


def log_audit(fields: Mapping[str, Any]) -> None:
    """Write one audit line: ``console write: key=value ...`` (values JSON-quoted when not one
    plain word, so an id with a newline cannot forge a line), the fields also on the record
    (``audit``) for a JSON handler."""
    text = " ".join(f"{k}={logs.encode_text_value(v)}" for k, v in fields.items())
    audit_logger.info("console write: %s", text, extra={"audit": dict(fields)})


STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#1d2430;background:#f6f7f9}
header{background:#1d2430;color:#fff;padding:10px 20px;display:flex;gap:20px;align-items:center}
header a{color:#cfe3ff;text-decoration:none}header .who{margin-left:auto;opacity:.7}
main{padding:16px 20px}h1{font-size:20px;margin:4px 0 12px}h2{font-size:16px;margin:18px 0 8px}
table{border-collapse:collapse;background:#fff;width:100%;margin-bottom:12px}
th,td{border-bottom:1px solid #e3e6ea;padding:5px 8px;text-align:left;vertical-align:top}
th{background:#eef1f5;font-weight:600}td.n{text-align:right;font-variant-numeric:tabular-nums}
.True{color:#0a7a2f}.False{color:#b3261e}.Unknown{color:#8a6d00}
.err{color:#b3261e}.muted{color:#6b7380}.box{background:#fff;padding:10px;border:1px solid #e3e6ea}
pre{background:#fff;border:1px solid #e3e6ea;padding:8px;overflow:auto;white-space:pre-wrap}
form.inline{display:inline}input,select,button{font:inherit;padding:3px 6px}
button.danger{background:#b3261e;color:#fff;border:0;padding:5px 12px}
button.go{background:#1f5fbf;color:#fff;border:0;padding:5px 12px}
.filters{display:flex;gap:8px;flex-wrap:wrap;align-items:end;margin-bottom:10px}
.filters label{display:flex;flex-direction:column;font-size:12px;color:#4a5360}
.banner{background:#fff4d6;border:1px solid #e8c766;padding:8px;margin-bottom:10px}
"""


class Console:
    """The console's request handlers over one :class:`sources.Source`."""

    def __init__(self, settings: ConsoleSettings, source: sources.Source) -> None:
        self.settings = settings
        self.source = source
        self.env = _build_environment()
        self.rates = sources.RateTracker()
        self.wrong_tokens = security.WrongTokens()

    # ---- plumbing ----------------------------------------------------------------------------

    def _identity(self, request: Request) -> str | None:
        headers = {k.lower(): v for k, v in request.headers.items()}
        return security.identify(
            self.settings.auth, headers, dict(request.cookies), _client_of(request)
        )

    def _untrusted_proxy_header(self, request: Request) -> Response | None:
        """A 403 (logged) for a request with the proxy's user header from an untrusted peer."""
        headers = {k.lower(): v for k, v in request.headers.items()}
        reason = security.untrusted_proxy_header(self.settings.auth, headers, _client_of(request))
        if reason is None:
            return None
        logger.warning("refused %s %s: %s", request.method, request.url.path, reason)
        return PlainTextResponse(f"refused: {reason}", 403, headers=SECURITY_HEADERS)

    def render(
        self, request: Request, template: str, status_code: int = 200, **context: Any
    ) -> HTMLResponse:
        identity = self._identity(request)
        body = self.env.get_template(template).render(
            title=self.settings.title,
            allow_writes=self.settings.allow_writes,
            csrf=security.build_csrf_token(self.settings.auth, identity) if identity else "",
            who=(identity or "").split("|")[1] if (identity or "").startswith("proxy|") else "",
            signed_in=identity is not None,
            **context,
        )
        return HTMLResponse(_printable(body), status_code=status_code, headers=SECURITY_HEADERS)

    def guarded(
        self, handler: Callable[[Request], Awaitable[Response]], *, write: bool = False
    ) -> Callable[[Request], Awaitable[Response]]:
        """``handler`` behind authentication, and for a write behind CSRF and the write flag."""

        async def run(request: Request) -> Response:
            if (refused := self._untrusted_proxy_header(request)) is not None:
                if write:
                    self._audit(request, None, "refused", "untrusted proxy header")
                return refused
            bearer = request.headers.get("authorization", "").lower().startswith("bearer ")
            if bearer and (refused := self._too_many_wrong_tokens(request)) is not None:
                if write:
                    self._audit(request, None, "refused", "too many wrong tokens")
                return refused
            identity = self._identity(request)
            if identity is None:
                if bearer:
                    self.wrong_tokens.record(_client_of(request))
                if write:
                    self._audit(request, None, "refused", "not signed in")
                return self.render(request, "login.html", 401, error=None)
            form: FormData | None = None
            if request.method == "POST":
                try:
                    form = await request.form(max_fields=FORM_FIELDS_MAX)
                except HTTPException as exc:  # too many fields, a field too large
                    if write:
                        self._audit(request, identity, "refused", f"form: {exc.detail}")
                    raise
                offered = str(form.get("csrf", ""))
                if not security.check_csrf_token(self.settings.auth, identity, offered):
                    if write:
                        self._audit(
                            request, identity, "refused", "missing or wrong CSRF token", form=form
                        )
                    return PlainTextResponse(
                        "refused: missing or wrong CSRF token", 403, headers=SECURITY_HEADERS
                    )
                if write and not self.settings.allow_writes:
                    self._audit(request, identity, "refused", "read-only console", form=form)
                    return PlainTextResponse(
                        "refused: this console is read-only (start it with --allow-writes)",
                        403,
                        headers=SECURITY_HEADERS,
                    )
            try:
                return await handler(request)
            except sources.PoolNotFoundError:
                if write:
                    self._audit(request, identity, "refused", "no such pool or queue", form=form)
                return self.render(request, "error.html", 404, message="no such pool or queue")
            except errors.CapabilityMissing as exc:
                if write:
                    self._audit(request, identity, "refused", str(exc), form=form)
                return self.render(request, "error.html", 501, message=str(exc))
            except (errors.BrokerError, OSError, TimeoutError) as exc:
                # An incident page of the console, not a bare 500: the reason's type only (an
                # error text may quote the URL), and for a write that its outcome is unknown.
                logger.warning(
                    "%s %s: the broker failed: %r", request.method, request.url.path, exc
                )
                message = f"the broker of this queue does not answer ({type(exc).__name__})"
                if write:
                    self._audit(
                        request,
                        identity,
                        "failed",
                        f"{message}: the action may have been done in part or not at all",
                        form=form,
                    )
                if request.method == "POST":
                    where = (
                        "the page of each job shows where it is"
                        if request.url.path.startswith("/job/")
                        else "the dead letters page shows what is left"
                    )
                    message += (
                        ": the action may not have been done, or done in part; "
                        f"{where} once the broker answers"
                    )
                return self.render(
                    request, "error.html", 503, message=message, heading="Broker unavailable"
                )

        return run

    def _audit(
        self,
        request: Request,
        identity: str | None,
        outcome: str,
        reason: str | None = None,
        counts: Mapping[str, int] | None = None,
        *,
        form: FormData | None = None,
    ) -> None:
        """Log the audit line of a write request (:func:`build_audit_fields`).

        ``form``: the request's, once read; only a signed-in request's is (a stranger's body
        is neither read nor logged, only that it tried)."""
        pool: str | None = None
        ids: list[str] | None = None
        if form is not None:
            pool = str(form.get("pool", ""))
            ids = [unquote_job_id(str(i)) for i in form.getlist("id") if str(i)]
        log_audit(
            build_audit_fields(
                str(request.path_params.get("action", "")),
                outcome,
                who=security.describe_identity(self.settings.auth, identity),
                client=_client_of(request),
                reason=reason,
                pool=pool,
                queue=getattr(request.state, "queue", None),
                ids=ids,
                counts=counts,
            )
        )

    async def _queue(self, request: Request) -> tuple[Any, str, str]:
        key = request.query_params.get("pool", "")
        broker, queue = await self.source.fetch_queue_broker(key)
        return broker, queue, key

    # ---- pages -------------------------------------------------------------------------------

    async def pools(self, request: Request) -> Response:
        pools = await self.source.fetch_pools()
        return self.render(request, "pools.html", pools=pools)

    async def queue(self, request: Request) -> Response:
        broker, queue, key = await self._queue(request)
        s = await _probe(broker).fetch_stats()
        # a broker that cannot list its running jobs shows the numbers without the list
        running = (
            await broker.list_in_flight_jobs() if isinstance(broker, base.InFlightJobs) else []
        )
        rates = self.rates.observe(key, s)
        return self.render(
            request,
            "queue.html",
            key=key,
            queue=queue,
            s=s,
            running=running,
            rates=rates,
            warning=stats.build_eviction_warning(s.maxmemory_policy),
            can_find=broker.capabilities.status_by_id,
        )

    async def find(self, request: Request) -> Response:
        broker, queue, key = await self._queue(request)
        job_id = next(iter(_query_values(request, "id")), "").strip()
        if not job_id:
            return self.render(
                request, "error.html", 400, message="no job id given", heading="Find a job"
            )
        try:
            [status] = await base.fetch_job_status(broker, [job_id])
        except errors.CapabilityMissing as exc:
            # RabbitMQ and SQS read their queues from the head only: a page saying so, not a 500
            return self.render(
                request,
                "error.html",
                501,
                message=str(exc),
                heading="Finding a job is not available",
            )
        failure = status.last_failure
        return self.render(
            request,
            "find.html",
            key=key,
            queue=queue,
            j=status,
            last_error=_printable(_first_line(failure.message)) if failure is not None else None,
            can_cancel=broker.capabilities.cancel_by_id and status.state in CANCELLABLE,
        )

    def _filter(self, request: Request) -> tuple[Any, dict[str, str], str | None]:
        from worker_runtime import triage

        params = {
            name: request.query_params.get(name, "").strip()
            for name in ("task", "reason", "error", "since", "until")
        }
        now = time.time()
        try:
            where = triage.DeadLetterFilter(
                task=params["task"] or None,
                reason=params["reason"] or None,
                error=params["error"] or None,
                since=triage.parse_time_bound(params["since"], now) if params["since"] else None,
                until=triage.parse_time_bound(params["until"], now) if params["until"] else None,
            )
        except triage.InvalidTime as exc:
            return triage.DeadLetterFilter(), params, str(exc)
        return where, params, None

    async def dead_letters(self, request: Request) -> Response:
        from worker_runtime import triage

        broker, queue, key = await self._queue(request)
        where, params, problem = self._filter(request)
        offset = _page_offset(request.query_params.get("offset"))
        page = await triage.fetch_matching_dead_letters(
            _dead_letters(broker), where, offset=offset, limit=PAGE_SIZE
        )
        summary = triage.build_summary(page.items) if page.items else []
        return self.render(
            request,
            "dlq.html",
            key=key,
            queue=queue,
            page=page,
            params=params,
            problem=problem,
            offset=offset,
            page_size=PAGE_SIZE,
            summary=summary,
            now=time.time(),
            error_type_of=triage.error_type_of,
        )

    async def job(self, request: Request) -> Response:
        broker, queue, key = await self._queue(request)
        job_id = next(iter(_query_values(request, "id")), "")
        d = await _dead_letters(broker).show_dead_letter(job_id)
        if d is None:
            return self.render(request, "error.html", 404, message="no such dead letter")
        try:
            envelope = json.dumps(json.loads(d.envelope_raw), indent=2, ensure_ascii=False)
        except ValueError:
            envelope = d.envelope_raw
        payload = json.dumps(d.payload, indent=2, ensure_ascii=False)
        from worker_runtime import triage

        return self.render(
            request,
            "job.html",
            key=key,
            queue=queue,
            d=d,
            why=triage.explain_reason(d),
            envelope=envelope,
            payload=payload,
        )

    async def _chosen_ids(self, request: Request, broker: Any, action: str) -> list[str]:
        from worker_runtime import triage

        ids = [i for i in _query_values(request, "id") if i]
        if ids or action in JOB_ACTIONS:
            return ids[:ACTION_LIMIT]  # a job action names its jobs: it never takes a filter
        where, _params, problem = self._filter(request)
        if problem is not None:
            return []
        found = await triage.fetch_matching_ids(_dead_letters(broker), where)
        return found[:ACTION_LIMIT]

    async def confirm(self, request: Request) -> Response:
        action = request.path_params["action"]
        if action not in _actions_of(request):
            return self.render(request, "error.html", 404, message="no such action")
        broker, queue, key = await self._queue(request)
        if action == "cancel" and not broker.capabilities.cancel_by_id:
            return self._cannot_cancel(request, broker)
        ids = await self._chosen_ids(request, broker, action)
        _where, params, problem = self._filter(request)
        return self.render(
            request,
            "confirm.html",
            key=key,
            queue=queue,
            action=action,
            ids=ids,
            params=params,
            problem=problem,
        )

    async def act(self, request: Request) -> Response:
        action = request.path_params["action"]
        identity = self._identity(request)
        form = await request.form(max_fields=FORM_FIELDS_MAX)  # read by guarded: its copy
        if action not in _actions_of(request):
            self._audit(request, identity, "refused", "no such action", form=form)
            return self.render(request, "error.html", 404, message="no such action")
        key = str(form.get("pool", ""))
        broker, queue = await self.source.fetch_queue_broker(key)
        request.state.queue = queue  # for the audit line of a broker failing from here on
        asked = [unquote_job_id(str(i)) for i in form.getlist("id") if str(i)]
        ids = asked[:ACTION_LIMIT]
        # past the limit, the ids the form named that this write does not touch
        counts = {"over_limit": len(asked) - len(ids)} if len(asked) > len(ids) else {}
        outcomes: list[tuple[str, base.CancelOutcome]] = []
        if action == "cancel":
            if not broker.capabilities.cancel_by_id:
                self._audit(
                    request, identity, "refused", "the broker cannot cancel by id", form=form
                )
                return self._cannot_cancel(request, broker)
            outcomes = list(
                zip(ids, await base.cancel_jobs(broker, ids) if ids else [], strict=True)
            )
            count = sum(o is base.CancelOutcome.CANCELLED for _i, o in outcomes)
            counts |= {str(o): sum(o is x for _i, x in outcomes) for o in base.CancelOutcome}
        elif action == "replay":
            done = await _dead_letters(broker).replay_dead_letters(
                job_ids=ids,
                reset_attempts=form.get("reset_attempts") == "1",
                rate_per_second=200.0,
            )
            count = len(done)
            counts["replayed"] = count
        else:  # purge: _actions_of let no other action through
            count = await _dead_letters(broker).purge_dead_letters(job_ids=ids) if ids else 0
            counts["purged"] = count
        self._audit(request, identity, "done", counts=counts, form=form)
        return self.render(
            request,
            "done.html",
            key=key,
            queue=queue,
            action=action,
            count=count,
            asked=len(ids),
            outcomes=outcomes,
        )

    def _cannot_cancel(self, request: Request, broker: Any) -> Response:
        """The page of a cancel on a broker without ``cancel_by_id`` (its confirm or its act)."""
        return self.render(
            request,
            "error.html",
            501,
            heading="Cancelling is not available",
            message=f"the {base.describe_backend(broker)} broker cannot cancel a job by id",
        )

    # ---- login -------------------------------------------------------------------------------

    async def login(self, request: Request) -> Response:
        if request.method == "GET":
            return self.render(request, "login.html", error=None)
        if not _same_origin(request):
            return PlainTextResponse("refused: cross-site login", 403, headers=SECURITY_HEADERS)
        if (refused := self._too_many_wrong_tokens(request)) is not None:
            return refused
        form = await request.form()
        if not security.check_token(self.settings.auth, str(form.get("token", ""))):
            self.wrong_tokens.record(_client_of(request))
            return self.render(request, "login.html", 401, error="wrong token")
        response = RedirectResponse("/", status_code=303, headers=SECURITY_HEADERS)
        response.set_cookie(
            security.SESSION_COOKIE,
            security.build_session_cookie(self.settings.auth),
            max_age=int(security.SESSION_SECONDS),
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    def _too_many_wrong_tokens(self, request: Request) -> Response | None:
        """A 429 for a client that offered too many wrong tokens lately, else None."""
        wait = self.wrong_tokens.seconds_blocked(_client_of(request))
        if not wait:
            return None
        return PlainTextResponse(
            f"refused: too many wrong tokens from this address; try again in {wait} s",
            429,
            headers={**SECURITY_HEADERS, "Retry-After": str(wait)},
        )

    async def logout(self, request: Request) -> Response:
        response = RedirectResponse("/login", status_code=303, headers=SECURITY_HEADERS)
        response.delete_cookie(security.SESSION_COOKIE)
        return response

    async def style(self, request: Request) -> Response:
        return Response(STYLE, media_type="text/css", headers={"Cache-Control": "max-age=300"})

    async def healthz(self, request: Request) -> Response:
        return PlainTextResponse("ok")


def _probe(broker: Any) -> base.QueueProbe:
    """The broker's statistics, or CapabilityMissing naming what it lacks (a 501 page)."""
    if not isinstance(broker, base.QueueProbe):
        raise errors.CapabilityMissing(
            f"the {type(broker).__name__} broker reports no queue statistics (QueueProbe)"
        )
    return broker


def _dead_letters(broker: Any) -> base.DeadLetters:
    """The broker's DLQ, or CapabilityMissing naming what it lacks (a 501 page)."""
    if not isinstance(broker, base.DeadLetters):
        raise errors.CapabilityMissing(
            f"the {type(broker).__name__} broker has no dead letters to browse (DeadLetters)"
        )
    return broker


def _actions_of(request: Request) -> tuple[str, ...]:
    """The writes the request's path serves: ``/dlq/...`` the DLQ's, ``/job/...`` a job's."""
    return JOB_ACTIONS if request.url.path.startswith("/job/") else DLQ_ACTIONS


def _first_line(text: str) -> str:
    """An error message's first line (a traceback or a multi-line message stays on its page)."""
    return text.splitlines()[0] if text else ""


def _same_origin(request: Request) -> bool:
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return origin is None
    return urllib.parse.urlsplit(origin).netloc == request.headers.get("host", "")


def _client_of(request: Request) -> str:
    """The connection's peer address: wrong tokens are counted by it and the proxy header is
    believed only from a trusted one. A proxy's own address when behind one (the console's
    server never rewrites it from X-Forwarded-For: ``cli.cmd_console``)."""
    return request.client.host if request.client is not None else "?"


def build_app(settings: ConsoleSettings, source: sources.Source) -> Starlette:
    """The console's ASGI application over ``source``."""
    c = Console(settings, source)
    routes = [
        Route("/healthz", c.healthz),
        Route("/static/console.css", c.style),
        Route("/login", c.login, methods=["GET", "POST"]),
        Route("/logout", c.guarded(c.logout), methods=["POST"]),
        Route("/", c.guarded(c.pools)),
        Route("/queue", c.guarded(c.queue)),
        Route("/dlq", c.guarded(c.dead_letters)),
        Route("/job", c.guarded(c.job)),
        Route("/find", c.guarded(c.find)),
        Route("/dlq/{action}", c.guarded(c.confirm), methods=["GET"]),
        Route("/dlq/{action}", c.guarded(c.act, write=True), methods=["POST"]),
        Route("/job/{action}", c.guarded(c.confirm), methods=["GET"]),
        Route("/job/{action}", c.guarded(c.act, write=True), methods=["POST"]),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await source.close()

    return Starlette(routes=routes, lifespan=lifespan)


def _page_offset(text: str | None) -> int:
    """The DLQ page's offset from the query: a hand-edited URL (``offset=abc``) shows the first
    page instead of failing the request."""
    try:
        return max(0, int(text or 0))
    except ValueError:
        return 0
