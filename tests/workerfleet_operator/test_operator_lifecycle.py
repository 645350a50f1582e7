"""The operator against the API emulator over real HTTP: create, update, drift, deletion."""

from __future__ import annotations

from collections.abc import Callable

from tests.workerfleet_operator.conftest import (
    NAMESPACE,
    OperatorRunner,
    RedisServer,
    build_pool,
    build_secret,
    condition,
    wait_until,
)
from tests.workerfleet_operator.emulator import Emulator


def pool(emu: Emulator, name: str) -> dict | None:
    return emu.get("workerpools", NAMESPACE, name, group="workerfleet.io")


def deployment(emu: Emulator, name: str) -> dict | None:
    return emu.get("deployments", NAMESPACE, name, group="apps")


def test_a_new_workerpool_gets_an_owned_deployment_and_becomes_ready(
    emulator: Emulator, redis_server: RedisServer, operator: Callable[..., OperatorRunner]
) -> None:
    # Given a Secret with the Redis URL and a running operator
    emulator.create("secrets", build_secret("redis-creds", redis_server.url))
    operator()
    # When a WorkerPool is created
    created = emulator.create("workerpools", build_pool("emails"), group="workerfleet.io")
    # Then a Deployment owned by the pool exists
    dep = wait_until(lambda: deployment(emulator, "emails"), message="no Deployment")
    owner = dep["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["uid"], owner["controller"]) == ("WorkerPool", created["metadata"]["uid"], True)
    # And the pool reports Ready with observedGeneration following its generation
    ready = wait_until(lambda: condition(pool(emulator, "emails"), "Ready").get("status") == "True",
                       message="pool not Ready")
    assert ready
    status = pool(emulator, "emails")["status"]
    assert status["observedGeneration"] == 1
