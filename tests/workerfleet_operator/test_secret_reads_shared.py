"""Pools sharing a Secret share ONE read of it, even when they all ask at the same moment.

Found by ``make bench-operator`` on the real API server: 10,000 new pools sharing one Secret
made 13,452 GETs of it while converging, 28% of the operator's requests, because every pool that
asked while the first read was still on its way (seconds, on a loaded API server) sent its own.
"""

from __future__ import annotations

import asyncio

import pytest
from workerfleet_operator.shell import config as config_module
from workerfleet_operator.shell import context, kube


async def test_pools_asking_for_one_secret_at_once_cause_one_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given an operator whose Secret reads take a while (a busy API server)
    reads: list[tuple[str, str, str]] = []

    async def slow_read(client: object, namespace: str, name: str, key: str) -> kube.SecretValue:
        reads.append((namespace, name, key))
        await asyncio.sleep(0.05)
        return kube.SecretValue(resource_version="7", value="redis://127.0.0.1:1/0", uid="u")

    monkeypatch.setattr(kube, "fetch_secret_value", slow_read)
    ctx = context.build_context(config_module.OperatorConfig())
    monkeypatch.setattr(ctx, "kube_client", lambda: object())

    # When 200 pools ask for the same Secret at once, and 3 for another one
    same = [ctx.fetch_secret("ns", "redis", "url") for _ in range(200)]
    other = [ctx.fetch_secret("ns", "other", "url") for _ in range(3)]
    results = await asyncio.gather(*same, *other)

    # Then each Secret is read once, and every pool got the value of that read
    assert sorted(reads) == [("ns", "other", "url"), ("ns", "redis", "url")]
    assert {value.value for _, value in results} == {"redis://127.0.0.1:1/0"}
    assert len({read_at for read_at, _ in results[:200]}) == 1


async def test_a_failed_shared_read_fails_every_pool_that_waited_and_the_next_ask_reads_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a Secret that does not exist yet
    reads: list[str] = []

    async def missing(client: object, namespace: str, name: str, key: str) -> kube.SecretValue:
        reads.append(name)
        await asyncio.sleep(0.01)
        if len(reads) == 1:
            raise kube.SecretNotFoundError(namespace, name, key, key_missing=False)
        return kube.SecretValue(resource_version="8", value="redis://127.0.0.1:1/0", uid="u")

    monkeypatch.setattr(kube, "fetch_secret_value", missing)
    ctx = context.build_context(config_module.OperatorConfig())
    monkeypatch.setattr(ctx, "kube_client", lambda: object())

    # When several pools ask at once
    outcomes = await asyncio.gather(
        *(ctx.fetch_secret("ns", "redis", "url") for _ in range(5)), return_exceptions=True
    )

    # Then all of them see the one failure, and a later ask reads again (nothing cached)
    assert all(isinstance(o, kube.SecretNotFoundError) for o in outcomes)
    _, value = await ctx.fetch_secret("ns", "redis", "url")
    assert value.resource_version == "8"
    assert reads == ["redis", "redis"]
