"""A login due for reloading stays in use when the reload fails, and is not reloaded per request.

The service-account token file is read again every 60 s and an exec plugin's token 60 s before it
expires: both while the login in hand is still accepted. A scripted loopback server stands in for
the API server (test_kube_client_retries.ScriptedServer, which records the Authorization header of
every request); the credentials' clock is a number.
"""

from __future__ import annotations

import datetime

import kopf
import pytest
from workerfleet_operator.shell import credentials, kube

from tests.workerfleet_operator.test_kube_client_retries import (
    ScriptedServer,
    read,
    server,  # noqa: F401  (the fixture)
)


class Loader:
    """Stands in for an exec plugin: fails while ``failing``, else hands out ``token``."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.failing = True
        self.token = "fresh"
        self.calls = 0

    def __call__(self) -> kopf.ConnectionInfo:
        self.calls += 1
        if self.failing:
            raise credentials.CredentialsError("exec plugin: identity provider unreachable")
        return kopf.ConnectionInfo(server=self.url, token=self.token, scheme="Bearer")


def due_for_reload(url: str, now: float) -> kopf.ConnectionInfo:
    """A login whose reload time (its expiration less the margin) has just passed."""
    expiration = datetime.datetime.fromtimestamp(now - 1.0, datetime.UTC)
    return kopf.ConnectionInfo(server=url, token="old", scheme="Bearer", expiration=expiration)


async def test_a_failed_reload_keeps_the_login_in_hand_and_tries_again_later(
    server: ScriptedServer,  # noqa: F811
) -> None:
    # Given a login due for reloading, still accepted by the API server, and a loader that fails
    now = [1_000.0]
    loader = Loader(server.url)
    shared = credentials.Credentials(
        loader, initial=due_for_reload(server.url, now[0]), now=lambda: now[0]
    )
    client = kube.KubeClient(shared)
    try:
        # When three requests go out
        for _ in range(3):
            assert await read(client) is not None
        # Then they went with the login in hand, and the loader ran once, not per request
        assert [a for _, a in server.seen] == ["Bearer old"] * 3
        assert loader.calls == 1
        # When the retry delay has passed and the loader works again
        now[0] += credentials.LOAD_RETRY_SECONDS
        loader.failing = False
        await read(client)
    finally:
        await client.close()
    # Then the next request loads the fresh login and uses it
    assert server.seen[-1] == ("GET", "Bearer fresh")
    assert loader.calls == 2


async def test_a_refused_login_whose_reload_fails_reaches_the_caller_as_that_failure(
    server: ScriptedServer,  # noqa: F811
) -> None:
    # Given a login the API server refuses (401) and a loader that fails
    server.accepted_tokens = {"fresh"}
    now = [1_000.0]
    loader = Loader(server.url)
    shared = credentials.Credentials(
        loader,
        initial=kopf.ConnectionInfo(server=server.url, token="old", scheme="Bearer"),
        now=lambda: now[0],
    )
    client = kube.KubeClient(shared)
    try:
        # When a request goes out, then the caller learns that no login could be loaded
        with pytest.raises(credentials.CredentialsError, match="unreachable"):
            await read(client)
        # and a request right after does not run the loader again for its own 401
        with pytest.raises(credentials.CredentialsError, match="unreachable"):
            await read(client)
        assert loader.calls == 1
        # When the loader works again, after the retry delay, the request goes through
        now[0] += credentials.LOAD_RETRY_SECONDS
        loader.failing = False
        assert await read(client) is not None
    finally:
        await client.close()
    assert [a for _, a in server.seen] == ["Bearer old", "Bearer old", "Bearer old", "Bearer fresh"]
    assert loader.calls == 2
