"""Unit tests of the shell's pure helpers: URL checks, redaction, drift and merge comparisons."""

from __future__ import annotations

import pathlib
import ssl
import subprocess
import tempfile

import kopf
import pytest
from workerfleet_operator.shell import context, drift, kube, queue


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0",
        "rediss://user:pw@redis.example:6380/2",
        "unix:///var/run/redis.sock",
        "redis+sentinel://sentinel.example:26379/mymaster/0",
        "redis+sentinel://h1:26379,h2:26379/mymaster",  # several Sentinels, as the runtime takes
        "rediss+sentinel://app:pw@h1:26379,h2:26380,h3/mymaster/1",
        "redis+cluster://10.0.0.1:7000",
    ],
)
def test_supported_redis_urls_are_accepted(url: str) -> None:
    queue.check_broker_url(url, "redis")


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("http://user:s3cret@host:1/0", "scheme"),
        ("redis://", "no host"),
        ("redis://host:notaport/0", "port"),
        ("s3cret-not-a-url", "scheme"),
        ("sentinel://user:s3cret@h1:26379/mymaster", "redis+sentinel://"),
        ("redis+sentinel://user:s3cret@h1:1,h2:x/m", "port"),
    ],
)
def test_unusable_redis_urls_are_refused_without_echoing_them(url: str, words: str) -> None:
    with pytest.raises(queue.InvalidBrokerUrlError) as caught:
        queue.check_broker_url(url, "redis")
    assert words in str(caught.value)
    assert "s3cret" not in str(caught.value)


def test_redaction_removes_the_url_and_its_password_even_percent_encoded() -> None:
    secret = kube.SecretValue("1", "redis://app:p%40ss-w0rd@10.0.0.1:6379/0")
    text = "Error connecting to redis://app:p%40ss-w0rd@10.0.0.1:6379/0; auth p@ss-w0rd failed"
    cleaned = queue.redact(text, secret)
    assert "p%40ss-w0rd" not in cleaned and "p@ss-w0rd" not in cleaned
    assert "<broker-url>" in cleaned


@pytest.mark.parametrize(
    "url",
    [
        "amqp://guest:guest@127.0.0.1:5672/",
        "amqps://app:pw@rabbit.example/orders?management_port=15671&prefetch=8",
        "amqp://app:pw@rabbit.example:5672/%2F?queue_type=classic",
    ],
)
def test_rabbitmq_urls_are_accepted_for_a_rabbitmq_block(url: str) -> None:
    queue.check_broker_url(url, "rabbitmq")


@pytest.mark.parametrize(
    ("url", "broker", "words"),
    [
        ("redis://:s3cret@redis:6379/0", "rabbitmq", "amqp:// or amqps://"),
        ("amqp://app:s3cret@rabbit:5672/", "redis", "queue.redis needs"),
        ("amqp://app:s3cret@rabbit:5672/?management_port=web", "rabbitmq", "management_port"),
        ("amqp://app:s3cret@rabbit:5672/?queue_type=stream", "rabbitmq", "queue_type"),
        ("amqp:///vhost", "rabbitmq", "no host"),
    ],
)
def test_a_url_of_another_broker_or_unusable_options_is_refused_without_echoing_it(
    url: str, broker: str, words: str
) -> None:
    with pytest.raises(queue.InvalidBrokerUrlError) as caught:
        queue.check_broker_url(url, broker)
    assert words in str(caught.value)
    assert "s3cret" not in str(caught.value)


def test_a_rabbitmq_queue_is_identified_by_server_and_vhost_without_credentials() -> None:
    one = queue.identify_queue("amqp://a:s3cret@Rabbit.example/orders?prefetch=4", "invoices")
    assert one == "amqp://rabbit.example:5672/orders invoices"
    # the same queue through other credentials and options is the same queue
    other = queue.identify_queue("amqp://b:other@rabbit.example:5672/orders", "invoices")
    assert other == one
    # the default vhost, and TLS on its own port
    assert queue.identify_queue("amqp://a:b@h/", "q") == "amqp://h:5672// q"
    assert queue.identify_queue("amqps://a:b@h/%2F", "q") == "amqp://h:5671// q"


def test_a_secret_value_never_prints_itself() -> None:
    value = kube.SecretValue("7", "redis://:hunter2@host:6379/0")
    assert "hunter2" not in repr(value) and "hunter2" not in str(value)


def test_drift_is_any_owned_field_that_differs_and_extra_fields_are_not_drift() -> None:
    ours = {"spec": {"template": {"spec": {"containers": [{"name": "w", "image": "a:1"}]}}}}
    same_plus_defaults = {
        "spec": {
            "replicas": 3,
            "template": {"spec": {"containers": [{"name": "w", "image": "a:1", "tty": False}]}},
        }
    }
    edited = {"spec": {"template": {"spec": {"containers": [{"name": "w", "image": "b:2"}]}}}}
    assert drift.is_subset(ours, same_plus_defaults)
    assert not drift.is_subset(ours, edited)
    assert not drift.is_subset(ours, {"spec": {}})


def _resources(cpu: object, memory: object, env: str = "0.5") -> dict[str, object]:
    container = {
        "name": "w",
        "env": [{"name": "RATIO", "value": env}],
        "resources": {"requests": {"cpu": cpu, "memory": memory}, "limits": {"cpu": cpu}},
    }
    return {"spec": {"template": {"spec": {"containers": [container]}}}}


@pytest.mark.parametrize(
    ("applied", "stored"),
    [
        (("0.5", "1024Mi"), ("500m", "1Gi")),
        ((1, "512Mi"), ("1", "512Mi")),
        (("1000m", "1.5Gi"), ("1", "1536Mi")),
        (("100m", "1e3"), ("0.1", "1k")),
    ],
)
def test_a_quantity_the_api_server_stored_in_its_canonical_spelling_is_not_drift(
    applied: tuple[object, object], stored: tuple[object, object]
) -> None:
    assert drift.is_subset(_resources(*applied), _resources(*stored))


def test_a_quantity_with_another_value_is_drift_and_only_quantities_are_compared_as_such() -> None:
    assert not drift.is_subset(_resources("0.5", "1Gi"), _resources("600m", "1Gi"))
    assert not drift.is_subset(_resources("0.5", "1Gi"), _resources("0.5", "1G"))
    # an env value is a string, whatever it looks like
    assert not drift.is_subset(_resources("1", "1Gi"), _resources("1", "1Gi", env="500m"))


def test_a_status_merge_that_changes_nothing_is_detected() -> None:
    stored = {"queue": {"backlog": 3, "arrivalRate": 0.5}, "replicas": 1}
    assert drift.merge(stored, {"queue": {"backlog": 3}}) == stored
    assert drift.merge(stored, {"queue": {"backlog": 4}}) != stored
    assert drift.merge(stored, {"replicas": None}) == {"queue": stored["queue"]}


def test_a_client_key_given_as_kubeconfig_data_leaves_no_file_behind(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a client certificate and key as inline data (client-*-data in a kubeconfig)
    key, cert = tmp_path / "client.key", tmp_path / "client.crt"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=workerfleet-test", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    info = kopf.ConnectionInfo(
        server="https://127.0.0.1:6443",
        insecure=True,
        certificate_data=cert.read_bytes(),
        private_key_data=key.read_bytes(),
    )
    # When the operator's client is built from it
    client = kube.KubeClient(info)
    # Then the TLS context holds the certificate, and no copy of the key is left on disk
    assert isinstance(client._ssl, ssl.SSLContext)
    assert list(scratch.iterdir()) == []


def _deployment(generation: int, observed: int, image: str, replicas: int = 2) -> dict[str, object]:
    template = {"spec": {"containers": [{"name": "w", "image": image}]}}
    return {
        "metadata": {"generation": generation},
        "spec": {"replicas": replicas, "template": template},
        "status": {"observedGeneration": observed},
    }


def test_pools_reading_one_queue_find_each_other_and_the_first_created_scales() -> None:
    readers = context.QueueReaders()
    readers.record(("ns", "b"), "redis://h/0#q", "2026-01-02T00:00:00Z")
    readers.record(("ns", "a"), "redis://h/0#q", "2026-01-03T00:00:00Z")
    readers.record(("ns", "c"), "redis://h/0#other", "2026-01-01T00:00:00Z")
    b, a, c = (readers.find_sharing(("ns", n)) for n in "bac")
    assert b is not None and b.others == ("ns/a",) and b.first == "ns/b" and not b.holds
    assert a is not None and a.others == ("ns/b",) and a.holds
    assert c is not None and c.others == () and not c.holds
    assert readers.find_sharing(("ns", "unknown")) is None


def test_a_pool_that_moves_to_another_queue_or_stops_leaves_its_old_group() -> None:
    readers = context.QueueReaders()
    readers.record(("ns", "a"), "redis://h/0#q", "2026-01-01T00:00:00Z")
    readers.record(("ns", "b"), "redis://h/0#q", "2026-01-02T00:00:00Z")
    # a moves to another queue: b reads q alone, a reads its new queue alone
    readers.record(("ns", "a"), "redis://h/0#new", "2026-01-01T00:00:00Z")
    b = readers.find_sharing(("ns", "b"))
    assert b is not None and b.others == () and not b.holds
    moved = readers.find_sharing(("ns", "a"))
    assert moved is not None and moved.others == ()
    # b stops: nothing of it is left
    readers.discard(("ns", "b"))
    readers.discard(("ns", "b"))  # twice is harmless
    assert readers.find_sharing(("ns", "b")) is None and len(readers) == 1


def test_the_rollout_generation_moves_with_the_pod_template_not_with_replicas() -> None:
    # our write changed the template: a rollout starts at its generation
    assert (
        drift.track_rollout_generation(3, _deployment(3, 3, "a:1"), _deployment(4, 3, "a:2")) == 4
    )
    # a replicas write bumped the generation: the rollout generation stays
    scaled = _deployment(5, 4, "a:2", replicas=6)
    assert drift.track_rollout_generation(4, _deployment(4, 4, "a:2"), scaled) == 4
    # unknown after a restart: a controller that has caught up bounds it, one behind does not
    assert (
        drift.track_rollout_generation(None, _deployment(7, 7, "a:2"), _deployment(7, 7, "a:2"))
        == 7
    )
    assert (
        drift.track_rollout_generation(None, _deployment(8, 7, "a:2"), _deployment(8, 7, "a:2"))
        is None
    )


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("redis://:pw@Redis.Example:6379/0", "redis://redis.example/0"),
        ("rediss://u:pw@h/2", "redis://h:6379?db=2"),
        ("redis://[::1]:6379/0", "redis://[::1]/0"),  # an IPv6 host, default port
        ("redis+sentinel://h1,h2/mymaster", "redis+sentinel://h1:26379,h2:26379/mymaster/0"),
    ],
)
def test_two_urls_for_one_queue_home_identify_it_alike_and_without_credentials(
    a: str, b: str
) -> None:
    assert queue.identify_queue(a, "q") == queue.identify_queue(b, "q")
    assert "pw" not in queue.identify_queue(a, "q")


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("redis://h/0", "redis://h/1"),
        ("redis://h:6379/0", "redis://h:6380/0"),
        ("redis+sentinel://h1:26379/one", "redis+sentinel://h1:26379/two"),
        ("unix:///run/a.sock", "unix:///run/b.sock"),
    ],
)
def test_different_queue_homes_identify_apart(a: str, b: str) -> None:
    assert queue.identify_queue(a, "q") != queue.identify_queue(b, "q")
