"""The process pool behind ``@app.task(..., executor="process")``: CPU-bound sync handlers.

The worker loop (:mod:`worker_runtime.worker`) owns one :class:`ProcessPool` when its App has a
process task and calls :meth:`ProcessPool.run` for each such job. Sync handlers in threads share
one GIL, so CPU-bound Python work does not scale past one core there; here each running job has
a child process of its own.

* **spawn**, never fork: a child starts a fresh interpreter and imports the handler's module
  (the worker process has threads and open Redis connections a fork would copy);
* **bounded**: at most ``size`` children; a job waiting for one keeps its worker slot (and its
  lease, which the worker renews) but its timeout only starts once a child takes it; a job
  whose lease was lost meanwhile gives its child back unused (:meth:`ProcessPool.release`);
* **one job per child at a time**, so a crash, a kill or a leak is confined to that job;
* **recycled** (like Celery's ``max_tasks_per_child``/``max_memory_per_child``) after
  ``max_jobs_per_child`` jobs, or when its peak resident memory grew by more than
  ``max_memory_growth_bytes`` since it started; a replacement starts on demand;
* **killed** (SIGKILL) when the job's task is cancelled: the worker's timeout watchdog and the
  drain's release both cancel, so a timed-out CPU-bound job really stops;
* a child that **dies** mid-job (segfault, ``os._exit``, OOM kill) fails only that job, with
  :class:`ChildProcessDied` (the worker records the attempt and retries it);
* children ignore SIGINT/SIGTERM (the worker drains and then closes the pool) and get SIGKILL
  from the kernel if the worker process dies (``PR_SET_PDEATHSIG``), so nothing outlives it.

What crosses the pipe is pickled: the handler goes by reference (module and qualified name of a
registered task, never a name a message chose), the validated payload by value (payload types
of process tasks must be importable at module level), and the handler's error back (or a
stand-in :class:`ChildError` when it does not pickle).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import importlib
import multiprocessing
import multiprocessing.connection
import os
import pickle
import resource
import signal
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from worker_runtime import errors

_PR_SET_PDEATHSIG = 1


class ProcessPoolError(Exception):
    """A job could not run in (or come back from) a child process."""


class ChildProcessDied(ProcessPoolError):
    """The child running the job exited before answering (crash, kill, ``os._exit``)."""

    def __init__(self, exitcode: int | None) -> None:
        how = (
            "still running"
            if exitcode is None
            else (f"killed by signal {-exitcode}" if exitcode < 0 else f"exit code {exitcode}")
        )
        super().__init__(f"the child process running the job died ({how})")
        self.exitcode = exitcode


class ChildError(Exception):
    """Stands in for a handler error that could not be pickled back from the child.

    ``type_names`` are ``module.qualname`` of the error's class and all its bases: the worker's
    retry policy matches them against the task's ``non_retryable`` types (and ``Reject``).
    """

    def __init__(self, error_type: str, message: str, type_names: tuple[str, ...] = ()) -> None:
        super().__init__(f"{error_type}: {message}")
        self.error_type = error_type
        self.message = message
        self.type_names = type_names

    def __reduce__(self) -> tuple[Any, ...]:
        # Exception pickles as ``cls(*self.args)``: with one formatted arg and a two-argument
        # __init__ the stand-in itself failed to unpickle in the worker, and the job was left
        # unsettled (and its child lost to the pool).
        return (ChildError, (self.error_type, self.message, self.type_names))


@dataclass(frozen=True)
class Call:
    """One job for a child: the handler by reference and its arguments."""

    module: str
    qualname: str
    payload: Any
    context: dict[str, Any] | None  # JobContext fields, or None for (payload)-only handlers


@dataclass(frozen=True)
class Reply:
    """What a child answered: the error (None = success) and the done key the handler set."""

    error: BaseException | None
    done_key: str | None
    done_ttl: float | None
    retire: bool  # the child exits after this reply (memory growth)


def _maxrss_bytes() -> int:
    # Linux reports ru_maxrss in KiB.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _resolve(module: str, qualname: str, cache: dict[tuple[str, str], Any]) -> Any:
    key = (module, qualname)
    fn = cache.get(key)
    if fn is None:
        obj: Any = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
        fn = cache[key] = obj
    return fn


def _call_in_child(call: Call, cache: dict[tuple[str, str], Any]) -> tuple[Any, ...]:
    from worker_runtime import app as app_mod
    from worker_runtime import logs

    handler = _resolve(call.module, call.qualname, cache)
    ctx = None
    token = None
    try:
        if call.context is None:
            handler(call.payload)
        else:
            fields = dict(call.context)
            ctx = app_mod.JobContext(
                **fields,
                logger=logs.get_logger(f"task.{fields['task']}"),
                idempotency=_no_idempotency_here,
            )
            token = logs.bind_job(
                logs.JobLogContext(
                    job_id=ctx.job_id,
                    task_name=ctx.task,
                    correlation_id=ctx.correlation_id,
                    attempt=ctx.attempt,
                    queue=ctx.queue,
                )
            )
            handler(call.payload, ctx)
    except BaseException as exc:
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        try:
            blob = pickle.dumps(exc)
            pickle.loads(blob)  # some exceptions pickle but cannot be rebuilt
        except Exception:
            names = tuple(f"{cls.__module__}.{cls.__qualname__}" for cls in type(exc).__mro__)
            stand_in = ChildError(type(exc).__qualname__, errors.message_of(exc)[:2000], names)
            blob = pickle.dumps(stand_in)
        return ("err", blob, tb[-4000:])
    finally:
        if token is not None:
            logs.unbind_job(token)
    done_key, done_ttl = ctx.done_key if ctx is not None else (None, None)
    return ("ok", done_key, done_ttl)


async def _no_idempotency_here(key: str) -> bool:
    msg = "ctx.already_done() is not available in a process task; check it before enqueueing"
    raise RuntimeError(msg)


def child_main(
    conn: multiprocessing.connection.Connection, max_memory_growth_bytes: int, log: tuple[str, str]
) -> None:
    """A child's loop (the spawn target): run calls until told to stop or the parent goes."""
    from worker_runtime import logs

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:  # the parent died before the death signal was armed
        return
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logs.configure(*log)
    cache: dict[tuple[str, str], Any] = {}
    baseline = _maxrss_bytes()
    conn.send(("ready",))
    while True:
        try:
            call = conn.recv()
        except (EOFError, OSError):
            return
        if call is None:
            return
        reply = _call_in_child(call, cache)
        grown = _maxrss_bytes() - baseline
        retire = 0 < max_memory_growth_bytes < grown
        conn.send((*reply, retire))
        if retire:
            return


class _Child:
    """One child process and the parent's end of its pipe."""

    def __init__(self, process: Any, conn: multiprocessing.connection.Connection) -> None:
        self.process = process
        self.conn = conn
        self.jobs = 0

    async def receive(self) -> tuple[Any, ...]:
        """The child's next message; :class:`ChildProcessDied` if the pipe closes first."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[tuple[Any, ...]] = loop.create_future()
        fd = self.conn.fileno()

        def readable() -> None:
            loop.remove_reader(fd)
            if fut.done():
                return
            try:
                fut.set_result(self.conn.recv())
            except (EOFError, OSError):
                fut.set_exception(ChildProcessDied(self.process.exitcode))

        loop.add_reader(fd, readable)
        try:
            return await fut
        finally:
            loop.remove_reader(fd)

    def kill(self) -> None:
        """SIGKILL the child and close the pipe (idempotent)."""
        with contextlib.suppress(OSError, ValueError):
            self.process.kill()
        with contextlib.suppress(OSError):
            self.conn.close()

    async def reap(self, wait_seconds: float) -> int | None:
        """Wait (off the loop, at most ``wait_seconds``) for the child to exit; its exit code."""
        await asyncio.to_thread(self.process.join, wait_seconds)
        code: int | None = self.process.exitcode
        return code


class ProcessPool:
    """A bounded pool of spawned child processes, one job at a time each (see module docs)."""

    def __init__(
        self,
        size: int,
        *,
        max_jobs_per_child: int = 1000,
        max_memory_growth_bytes: int = 0,
        log: tuple[str, str] = ("info", "json"),
        on_child_retired: Callable[[str], None] | None = None,
    ) -> None:
        if size < 1:
            raise ValueError("a process pool needs at least one child")
        self.size = size
        self.max_jobs_per_child = max_jobs_per_child
        self.max_memory_growth_bytes = max_memory_growth_bytes
        self._log = log
        self._ctx = multiprocessing.get_context("spawn")
        self._slots = asyncio.Semaphore(size)
        self._idle: list[_Child] = []
        self._children: set[_Child] = set()
        self._closed = False
        self._on_retired = on_child_retired
        self.started = 0  # children started so far (for tests and metrics)

    @property
    def pids(self) -> list[int]:
        """The pids of the live children."""
        return sorted(c.process.pid for c in self._children if c.process.pid is not None)

    async def _start_child(self) -> _Child:
        parent_end, child_end = self._ctx.Pipe(duplex=True)
        process = self._ctx.Process(
            target=child_main,
            args=(child_end, self.max_memory_growth_bytes, self._log),
            name="wf-process",
            daemon=False,  # it must be allowed to finish its job during a drain
        )
        # Started from the loop's own thread (a few ms: fork/exec and the preparation data):
        # the kernel's parent-death signal follows the thread that forked, and a pool thread
        # may exit while the worker lives on.
        process.start()
        child_end.close()
        child = _Child(process, parent_end)
        self._children.add(child)
        self.started += 1
        try:
            await child.receive()  # ("ready",): imports done, timeouts may start counting
        except BaseException:
            await self._discard(child)
            raise
        return child

    async def acquire(self) -> _Child:
        """A ready child for one job (waits while all ``size`` are busy)."""
        if self._closed:
            raise ProcessPoolError("the process pool is closed")
        await self._slots.acquire()
        try:
            while self._idle:
                child = self._idle.pop()
                if child.process.is_alive():
                    return child
                await self._discard(child)
            return await self._start_child()
        except BaseException:
            self._slots.release()
            raise

    async def release(self, child: _Child) -> None:
        """Give an acquired child back unused: the job it was acquired for will not run.

        It is idle again as it was (its job count unchanged, so recycling is not brought
        forward); one that died meanwhile is forgotten, and one given back once :meth:`close`
        began is stopped as a child whose job ended then is, so the drain does not wait for it.
        """
        try:
            if self._closed:
                await self._retire(child, "closed")
            elif child.process.is_alive():
                self._idle.append(child)
            else:
                await self._discard(child)
        finally:
            self._slots.release()

    async def run(self, child: _Child, call: Call) -> Reply:
        """Run ``call`` on an acquired child; the child returns to the pool (or is retired).

        Cancelling kills the child. A child that dies raises :class:`ChildProcessDied`.
        """
        try:
            try:
                child.conn.send(call)
                message = await child.receive()
            except asyncio.CancelledError:
                await self._discard(child)
                raise
            except ChildProcessDied:
                child.kill()
                code = await child.reap(2.0)
                self._forget(child)
                raise ChildProcessDied(code) from None
            except (OSError, pickle.PicklingError, AttributeError, TypeError) as exc:
                # The call did not pickle (a payload type defined inside a function), or the
                # pipe broke: the child is in an unknown state.
                await self._discard(child)
                raise ProcessPoolError(f"cannot hand the job to a child: {exc!r}") from exc
            child.jobs += 1
            reply = self._build_reply(message)
            if reply.retire:
                await self._retire(child, "memory")
            elif 0 < self.max_jobs_per_child <= child.jobs:
                await self._retire(child, "jobs")
            elif self._closed:
                await self._retire(child, "closed")
            else:
                self._idle.append(child)
            return reply
        finally:
            self._slots.release()

    @staticmethod
    def _build_reply(message: tuple[Any, ...]) -> Reply:
        if message[0] == "ok":
            _, done_key, done_ttl, retire = message
            return Reply(None, done_key, done_ttl, bool(retire))
        _, blob, tb, retire = message
        try:
            error: BaseException = pickle.loads(blob)
        except Exception as exc:
            # The child checks its error rebuilds; should one still not (a class only the
            # child can import), the attempt fails with what is known rather than leaving
            # the job unsettled.
            error = ChildError("UnpicklableError", f"the child's error did not unpickle: {exc!r}")
        error.add_note(f"in the child process:\n{tb}")
        return Reply(error, None, None, bool(retire))

    async def _retire(self, child: _Child, why: str) -> None:
        with contextlib.suppress(OSError, ValueError):
            child.conn.send(None)
        if await child.reap(5.0) is None:
            child.kill()
            await child.reap(2.0)
        self._forget(child)
        with contextlib.suppress(OSError):
            child.conn.close()
        if self._on_retired is not None:
            self._on_retired(why)

    async def _discard(self, child: _Child) -> None:
        child.kill()
        await child.reap(2.0)
        self._forget(child)

    def _forget(self, child: _Child) -> None:
        self._children.discard(child)
        with contextlib.suppress(ValueError):
            self._idle.remove(child)

    async def prestart(self) -> None:
        """Start every child now, so the first jobs do not wait for interpreters to boot."""
        # Each start holds a slot, so idle + busy children never exceed ``size``.
        while len(self._children) < self.size and not self._closed:
            async with self._slots:
                if len(self._children) >= self.size:
                    return
                self._idle.append(await self._start_child())

    async def close(self, wait_seconds: float = 5.0) -> None:
        """Stop idle children, wait for busy ones up to ``wait_seconds``, then kill the rest."""
        self._closed = True
        for child in list(self._idle):
            with contextlib.suppress(OSError, ValueError):
                child.conn.send(None)
        self._idle.clear()
        children = list(self._children)
        if children:
            await asyncio.gather(*(c.reap(wait_seconds) for c in children))
        for child in children:
            if child.process.is_alive():
                child.kill()
                await child.reap(2.0)
            self._forget(child)
            with contextlib.suppress(OSError):
                child.conn.close()


def default_size(concurrency: int) -> int:
    """Children when the settings give none: one per core, never more than the concurrency."""
    return max(1, min(concurrency, os.cpu_count() or 1))


def handler_reference(handler: Callable[..., Any], task: str) -> tuple[str, str]:
    """The (module, qualified name) a child imports the handler by; refuses what it cannot."""
    module = getattr(handler, "__module__", None)
    qualname = getattr(handler, "__qualname__", "")
    if not module or "<locals>" in qualname or "<lambda>" in qualname:
        msg = (
            f"task {task!r}: a process task's handler must be a module-level function "
            "(children import it by name)"
        )
        raise TypeError(msg)
    if module == "__main__":
        msg = (
            f"task {task!r}: a process task's handler must live in an importable module, "
            "not in the script being run (children import it by name)"
        )
        raise TypeError(msg)
    return module, qualname
