"""A broker server that fails to start leaves no temporary directory behind, nor does the demo
that wanted it (/tmp held dozens of workerfleet-demo-* and workerfleet-redis-* directories).

Each test points the temporary directory at one of its own and puts a broker server on PATH that
exits at once, as a broken install or a bad config does.
"""

from __future__ import annotations

import pathlib
import tempfile

import pytest
from workerfleet_operator.local import brokers, demo, embedded, embedded_rabbitmq, embedded_redis


def fail_at_start(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path, name: str
) -> pathlib.Path:
    """A ``name`` on PATH that prints a fatal line and exits 1; returns the temp directory."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / name
    fake.write_text("#!/bin/sh\necho 'FATAL: broken on purpose'\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    return temp


def test_a_redis_server_that_fails_to_start_leaves_no_directory_and_says_why(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    # Given a redis-server that exits at once
    temp = fail_at_start(monkeypatch, tmp_path, "redis-server")
    # When the embedded Redis starts in a directory of its own
    with pytest.raises(embedded_redis.EmbeddedRedisError) as failed:
        embedded_redis.EmbeddedRedis().start()
    # Then the error carries the end of its log, and its directory is gone
    assert "exited with code 1" in str(failed.value)
    assert "FATAL: broken on purpose" in str(failed.value)
    assert list(temp.iterdir()) == []


def test_a_redis_server_that_fails_to_start_keeps_a_directory_the_user_gave(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    fail_at_start(monkeypatch, tmp_path, "redis-server")
    given = tmp_path / "data"
    with pytest.raises(embedded_redis.EmbeddedRedisError):
        embedded_redis.EmbeddedRedis(given).start()
    assert (given / "redis.log").exists()


def test_a_rabbitmq_node_that_fails_to_start_leaves_no_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    # Given a rabbitmq-server start script that exits at once
    temp = fail_at_start(monkeypatch, tmp_path, "rabbitmq-server")
    monkeypatch.setattr(
        embedded_rabbitmq, "SCRIPT_PATHS", (str(tmp_path / "bin" / "rabbitmq-server"),)
    )
    # When the local fleet starts its embedded node
    with pytest.raises(embedded.EmbeddedServerError, match="did not start"):
        brokers.start_server("rabbitmq", None)
    # Then its directory went with it
    assert list(temp.iterdir()) == []


def test_a_demo_whose_broker_fails_to_start_leaves_no_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    # Given a redis-server that exits at once
    temp = fail_at_start(monkeypatch, tmp_path, "redis-server")
    # When the demo starts on it
    with pytest.raises(embedded.EmbeddedServerError):
        demo.run_demo(seconds=5, out_dir=tmp_path / "out", use_prometheus=False)
    # Then neither its work directory nor the server's is left
    assert list(temp.iterdir()) == []
