"""What no pool uses any more is released in shared sweeps (OperatorContext.release_unused).

Every stopped pool asks for a sweep of the Secret values, probes and Redis clients no running
pool uses; a sweep walks every pool and probe. One sweep per stop made a mass deletion
quadratic (10,000 pools: 84 CPU-seconds with the event loop busy), so the calls made while a
sweep is due share the next one. These tests pin what the sharing must keep: everything is
released, a call never returns before a sweep that began after it, and failures reach callers.
"""

from __future__ import annotations

import asyncio
import types
from typing import Any, cast

import pytest
from workerfleet_operator.shell import config, context, queue

KEY = queue.ClientKey("default", "redis-creds", "url", "1")
SECRET = ("default", "redis-creds", "url")


def build_ctx_with_pools(count: int) -> context.OperatorContext:
    """A context whose ``count`` running pools read queues q0.. through one Secret."""
    ctx = context.build_context(config.OperatorConfig())
    for i in range(count):
        controller = types.SimpleNamespace(
            secret_key=KEY, pool_facts=types.SimpleNamespace(queue_name=f"q{i}")
        )
        ctx.pools[("default", f"p{i}")] = cast(Any, controller)
        ctx.queues._index(KEY, f"q{i}")
    ctx.secrets[SECRET] = (0.0, cast(Any, None))
    return ctx


def probed_queues(ctx: context.OperatorContext) -> set[str]:
    return set(ctx.queues._queues.get(KEY, set()))


def count_sweeps(ctx: context.OperatorContext, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record each sweep (a call of the reader's close_unused) with how many pools it kept."""
    sweeps: list[int] = []
    close_unused = ctx.queues.close_unused

    async def counted(in_use: set[tuple[queue.ClientKey, str]]) -> None:
        sweeps.append(len(in_use))
        await close_unused(in_use)

    monkeypatch.setattr(ctx.queues, "close_unused", counted)
    return sweeps


def test_stopping_a_thousand_pools_at_once_releases_everything_in_a_few_sweeps(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def scenario() -> None:
        # Given 1,000 running pools on one Secret
        ctx = build_ctx_with_pools(1000)
        sweeps = count_sweeps(ctx, monkeypatch)

        # When all of them stop at once, each asking for what it used to be released
        async def stop(i: int) -> None:
            del ctx.pools[("default", f"p{i}")]
            await ctx.release_unused()

        await asyncio.gather(*(stop(i) for i in range(1000)))
        # Then nothing is left: no probe, no Secret value
        assert probed_queues(ctx) == set()
        assert ctx.secrets == {}
        # ... and the 1,000 calls shared a few sweeps instead of one each
        assert 1 <= len(sweeps) <= 3, sweeps

    asyncio.run(scenario())


def test_a_pool_that_stops_during_a_sweep_is_released_by_the_next_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def scenario() -> None:
        # Given three pools, and a sweep for the first one's stop held inside its closing
        ctx = build_ctx_with_pools(3)
        inside, go_on = asyncio.Event(), asyncio.Event()
        close_unused = ctx.queues.close_unused

        async def held(in_use: set[tuple[queue.ClientKey, str]]) -> None:
            if not go_on.is_set():
                inside.set()
                await go_on.wait()
            await close_unused(in_use)

        monkeypatch.setattr(ctx.queues, "close_unused", held)
        del ctx.pools[("default", "p0")]
        first = asyncio.ensure_future(ctx.release_unused())
        await inside.wait()
        # When the second pool stops while that sweep is under way (it counted p1 as running)
        del ctx.pools[("default", "p1")]
        second = asyncio.ensure_future(ctx.release_unused())
        await asyncio.sleep(0)
        assert not second.done()
        go_on.set()
        await first
        # Then the first call returns with its own pool released, the second's not yet ...
        assert probed_queues(ctx) == {"q1", "q2"}
        # ... and the second returns only after a sweep that saw its pool stopped
        await second
        assert probed_queues(ctx) == {"q2"}
        assert SECRET in ctx.secrets  # the third pool still reads through the Secret

    asyncio.run(scenario())


def test_a_failing_sweep_reaches_its_callers_and_the_next_call_sweeps_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def scenario() -> None:
        # Given a pool that stopped, and a reader whose closing fails once
        ctx = build_ctx_with_pools(2)
        close_unused = ctx.queues.close_unused
        failures = [RuntimeError("closing the probe failed")]

        async def failing_once(in_use: set[tuple[queue.ClientKey, str]]) -> None:
            if failures:
                raise failures.pop()
            await close_unused(in_use)

        monkeypatch.setattr(ctx.queues, "close_unused", failing_once)
        del ctx.pools[("default", "p0")]
        # When its release is asked for, the caller sees the failure
        with pytest.raises(RuntimeError, match="closing the probe failed"):
            await ctx.release_unused()
        # Then the next call sweeps again and releases what is unused
        del ctx.pools[("default", "p1")]
        await ctx.release_unused()
        assert probed_queues(ctx) == set()
        assert ctx.secrets == {}

    asyncio.run(scenario())
