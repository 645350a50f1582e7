"""A pool held for its spec waits quietly in its loop (no API server, no clock: a stand-in
reconcile holds the pool, and the loop's rounds are counted over a bounded number of turns of
the event loop).

A valid pool edited into an invalid one keeps the Secret value it read before; its poll time,
in the past and never moved on (a held pool does not poll), woke its loop at once, round after
round: some 90,000 rounds a second of one CPU core for one pool.
"""

from __future__ import annotations

import asyncio

import pytest
from workerfleet_operator import api
from workerfleet_operator.shell import config as config_module
from workerfleet_operator.shell import context, kube, reconcile
from workerfleet_operator.shell import pool as pool_mod

from tests.workerfleet_operator import conftest


async def test_a_pool_held_for_an_invalid_spec_waits_instead_of_spinning_its_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a pool that read its Secret while valid, and whose spec is now invalid (the
    # reconcile holds it: nothing applied, no poll until the spec changes)
    async def held(controller: pool_mod.PoolController) -> None:
        controller.spec_problem = reconcile.SpecProblemError(api.Reason.INVALID_SPEC, "bad")

    monkeypatch.setattr(reconcile, "reconcile", held)
    controller = pool_mod.PoolController(
        context.build_context(config_module.OperatorConfig()), conftest.NAMESPACE, "emails"
    )
    body = conftest.build_pool("emails")
    body["metadata"].update(uid="uid-1", generation=2, resourceVersion="10")
    controller.observe(body)
    controller.secret = kube.SecretValue("1", "redis://127.0.0.1:6379/0")
    rounds: list[None] = []
    forget = pool_mod.PoolController.forget_round_state

    def counted_forget(controller: pool_mod.PoolController) -> None:
        rounds.append(None)  # called once per round of the loop, right before it waits
        forget(controller)

    monkeypatch.setattr(pool_mod.PoolController, "forget_round_state", counted_forget)
    # When its loop runs for 100 turns of the event loop
    controller.start()
    try:
        for _ in range(100):
            await asyncio.sleep(0)
        assert controller.spec_problem is not None, "the pool's reconcile did not run"
    finally:
        await controller.stop()
    # Then it reconciled once and went to wait for the next change: one round, not one per turn
    assert len(rounds) == 1
