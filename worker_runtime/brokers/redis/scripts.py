"""Loads the engine's Lua scripts and runs them by EVALSHA (SCRIPT LOAD on NOSCRIPT); nothing else.

Used by :mod:`worker_runtime.brokers.redis.queue`, :mod:`worker_runtime.brokers.redis.stats`,
:mod:`worker_runtime.brokers.redis.dlq` and the helpers. Each script is ``lua/_prelude.lua`` (the
shared KEYS layout and functions) followed by ``lua/<name>.lua``; a ``#!lua flags=...`` shebang of
the script stays on the first line. Works on a single Redis and on Redis Cluster: every call passes
the queue's keys, which share one slot. The scripts that lease and settle jobs carry
``flags=allow-oom``: a full Redis (``maxmemory``, ``noeviction``) refuses new jobs, never the
renewals and acks that keep the accepted ones moving (docs/queue-engine.md).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import redis.client
import redis.exceptions

Arg = str | int | float | bytes
Key = str | bytes


def _read(name: str) -> str:
    return (
        resources.files("worker_runtime.brokers.redis")
        .joinpath("lua", f"{name}.lua")
        .read_text("utf-8")
    )


def _split_shebang(body: str) -> tuple[str, str]:
    """(the ``#!lua flags=...`` first line or "", the rest of the body)."""
    if body.startswith("#!"):
        first, _, rest = body.partition("\n")
        return first, rest
    return "", body


def build_source(name: str) -> str:
    """The full text sent to Redis for script ``name`` (prelude included)."""
    flags, body = _split_shebang(_read(name))
    prelude = _read("_prelude")
    if flags:
        return f"{flags}\n{prelude}\n{body}"
    return f"{prelude}\n{body}"


@dataclass(frozen=True)
class Script:
    """One server-side script: its name, full source and SHA1."""

    name: str
    source: str
    sha: str

    async def __call__(
        self, client: Any, keys: Sequence[Key], args: Sequence[Arg], *, decode: bool = True
    ) -> Any:
        """Run on an asyncio client (Redis or RedisCluster); loads the script once if missing.

        ``decode=False`` returns the reply's strings as bytes even on a ``decode_responses``
        client: for replies carrying stored job data, which need not be UTF-8 (a single bad
        byte would otherwise fail the whole reply).
        """
        options: dict[str, Any] = {} if decode else {redis.client.NEVER_DECODE: []}
        try:
            return await client.execute_command(
                "EVALSHA", self.sha, len(keys), *keys, *args, **options
            )
        except redis.exceptions.NoScriptError:
            await client.script_load(self.source)
            return await client.execute_command(
                "EVALSHA", self.sha, len(keys), *keys, *args, **options
            )

    def call_sync(self, client: Any, keys: Sequence[Key], args: Sequence[Arg]) -> Any:
        """Run on a blocking client (redis.Redis or redis.cluster.RedisCluster)."""
        try:
            return client.evalsha(self.sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            client.script_load(self.source)
            return client.evalsha(self.sha, len(keys), *keys, *args)


def build_combined_source(first: str, second: str, first_argc: int) -> str:
    """One script running ``second`` (ARGV after the first ``first_argc``) then ``first``.

    Each body becomes a function whose parameter shadows ARGV, so the bodies stay unchanged;
    the reply is ``second``'s reply followed by ``first``'s. Used for ack-and-fetch: the acks
    are applied before the fetch reads, in one round trip. The flags line (shebang) of the
    bodies, which must agree, heads the combined script.
    """
    prelude = _read("_prelude")
    flags, first_body = _split_shebang(_read(first))
    second_flags, second_body = _split_shebang(_read(second))
    if flags != second_flags:
        raise ValueError(f"{first} ({flags!r}) and {second} ({second_flags!r}) differ in flags")
    head = f"{flags}\n" if flags else ""
    return (
        f"{head}{prelude}\n"
        f"local function run_first(ARGV)\n{first_body}\nend\n"
        f"local function run_second(ARGV)\n{second_body}\nend\n"
        "local rest = {}\n"
        f"for i = {first_argc + 1}, #ARGV do rest[#rest + 1] = ARGV[i] end\n"
        "local done = run_second(rest)\n"
        f"local out = run_first({{unpack(ARGV, 1, {first_argc})}})\n"
        "out[#out + 1] = done\n"
        "return out\n"
    )


def build_script(name: str, *, prelude: bool = True) -> Script:
    """Load ``lua/<name>.lua`` with the prelude (unless ``prelude`` is False: a script whose
    KEYS are not one queue's layout) and compute its SHA1."""
    source = build_source(name) if prelude else _read(name)
    return Script(name=name, source=source, sha=hashlib.sha1(source.encode("utf-8")).hexdigest())


ENQUEUE = build_script("enqueue")
FETCH = build_script("fetch")
ACK = build_script("ack")
RETRY = build_script("retry")
DEAD_LETTER = build_script("dead_letter")
RELEASE = build_script("release")
RENEW = build_script("renew")
DEREGISTER = build_script("deregister")
STATS = build_script("stats")
DLQ_LIST = build_script("dlq_list")
DLQ_REPLAY = build_script("dlq_replay")
DLQ_PURGE = build_script("dlq_purge")
RATELIMIT = build_script("ratelimit")
ADOPT = build_script("adopt")
CANCEL = build_script("cancel")
STATUS = build_script("status")
PUBLISH = build_script("publish", prelude=False)

_ACK_FETCH_SOURCE = build_combined_source("fetch", "ack", 9)
ACK_FETCH = Script(
    name="ack_fetch",
    source=_ACK_FETCH_SOURCE,
    sha=hashlib.sha1(_ACK_FETCH_SOURCE.encode("utf-8")).hexdigest(),
)
"""ack (ARGV[10]: packed acks) then fetch (ARGV[1..9]) in one call; reply = fetch's + acks."""
