"""Shared set-up of the operator benchmarks: one real redis-server and the API emulator.

Used by ``bench/autoscaler_reaction.py`` and ``bench/operator_scale.py``: both need a scratch
directory, a redis-server on a free loopback port (the local fleet's
:class:`~workerfleet_operator.local.embedded_redis.EmbeddedRedis`), the Kubernetes API emulator
of the test suite with a kubeconfig pointing at it, and the ``redis-creds`` Secret every
benchmark WorkerPool names. :func:`start_harness` starts all of it, :meth:`Harness.stop` undoes
it in reverse order. The benchmarks put the repository root on ``sys.path`` before importing it.
"""

from __future__ import annotations

import base64
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml
from workerfleet_operator.local import embedded_redis

from tests.workerfleet_operator.emulator import Emulator

SECRET_NAME = "redis-creds"
SECRET_KEY = "url"


@dataclass
class Harness:
    """What a benchmark runs against; ``url`` is the Redis the Secret points at."""

    workdir: Path
    redis: embedded_redis.EmbeddedRedis
    emulator: Emulator
    kubeconfig: Path

    @property
    def url(self) -> str:
        return self.redis.url

    def stop(self, *, keep_workdir: bool = False) -> None:
        """Stop the emulator and Redis; remove the scratch directory unless asked to keep it."""
        self.emulator.stop()
        self.redis.stop()
        if keep_workdir:
            print("kept", self.workdir)
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)


def start_harness(prefix: str, namespace: str, *, history_size: int | None = None) -> Harness:
    """Start Redis and the emulator, write the kubeconfig and create the Redis Secret.

    Raises ``embedded_redis.EmbeddedRedisError`` (with the fix in its message) when
    redis-server is missing or does not come up.
    """
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    redis_server = embedded_redis.EmbeddedRedis(data_dir=workdir / "redis").start()
    emulator = Emulator() if history_size is None else Emulator(history_size=history_size)
    emulator.start()
    kubeconfig = workdir / "kubeconfig.yaml"
    kubeconfig.write_text(yaml.safe_dump(emulator.kubeconfig()))
    emulator.create(
        "secrets",
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": SECRET_NAME, "namespace": namespace},
            "data": {SECRET_KEY: base64.b64encode(redis_server.url.encode()).decode()},
        },
    )
    return Harness(workdir, redis_server, emulator, kubeconfig)
