"""An SQS-backed WorkerPool: the workers' sqs:// URL composed from ``spec.queue.sqs``, the queue
URLs KEDA reads, and the rules of the SQS block (pure functions, no server)."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from workerfleet_operator import api, manifests, plan
from workerfleet_operator.api import spec as spec_mod
from workerfleet_operator.shell import inventory
from workerfleet_operator.shell import queue as queue_mod

from tests.workerfleet_operator import crd_validation
from worker_runtime.brokers.sqs import settings as sqs_settings

SQS_VARIANTS = (
    {"region": "eu-west-1"},
    {"region": "us-east-1", "endpoint": "http://127.0.0.1:9324"},
    {"region": "eu-central-1", "endpoint": "https://vpce-1a2b.sqs.eu-central-1.vpce.amazonaws.com"},
    {"region": "us-east-1", "endpoint": "http://elasticmq.dev.svc:9324", "fifo": True},
    {"region": "ap-south-1", "priorities": False, "prefix": "staging-"},
)


@pytest.mark.parametrize("fields", SQS_VARIANTS, ids=lambda f: ",".join(sorted(f)))
def test_the_composed_url_reads_back_as_the_spec_in_the_runtimes_parser(
    fields: dict[str, object],
) -> None:
    sqs = spec_mod.SqsSpec.model_validate(fields)
    parsed = sqs_settings.parse_sqs_url(manifests.encode_sqs_url(sqs))
    assert parsed.region == sqs.region
    assert parsed.endpoint_url == sqs.endpoint
    assert (parsed.fifo, parsed.priorities, parsed.prefix) == (sqs.fifo, sqs.priorities, sqs.prefix)


def test_the_composed_url_carries_no_credentials_and_plain_http_only_when_asked() -> None:
    aws = manifests.encode_sqs_url(spec_mod.SqsSpec(region="eu-west-1"))
    local = manifests.encode_sqs_url(
        spec_mod.SqsSpec(region="us-east-1", endpoint="http://127.0.0.1:9324")
    )
    assert aws == "sqs://?region=eu-west-1"
    assert local == "sqs://127.0.0.1:9324?region=us-east-1&secure=false"
    assert "@" not in aws + local


def test_keda_reads_every_priority_queue_by_its_full_url() -> None:
    aws = spec_mod.SqsSpec(region="eu-west-1", account_id="123456789012")
    assert manifests.compose_sqs_queue_urls(aws, "emails") == [
        ("high", "https://sqs.eu-west-1.amazonaws.com/123456789012/emails-high"),
        ("normal", "https://sqs.eu-west-1.amazonaws.com/123456789012/emails"),
        ("low", "https://sqs.eu-west-1.amazonaws.com/123456789012/emails-low"),
    ]
    local = spec_mod.SqsSpec(
        region="us-east-1",
        endpoint="http://127.0.0.1:9324",
        account_id="000000000000",
        fifo=True,
        priorities=False,
        prefix="t-",
    )
    assert manifests.compose_sqs_queue_urls(local, "emails") == [
        ("normal", "http://127.0.0.1:9324/000000000000/t-emails.fifo")
    ]
    china = spec_mod.SqsSpec(region="cn-north-1", account_id="123456789012", priorities=False)
    assert manifests.compose_sqs_queue_urls(china, "q") == [
        ("normal", "https://sqs.cn-north-1.amazonaws.com.cn/123456789012/q")
    ]


def test_plain_http_to_an_aws_endpoint_is_refused_and_to_any_other_server_allowed() -> None:
    with pytest.raises(ValueError, match="an AWS endpoint takes https"):
        spec_mod.SqsSpec(region="eu-west-1", endpoint="http://sqs.eu-west-1.amazonaws.com")
    with pytest.raises(ValueError, match="an AWS endpoint takes https"):
        spec_mod.SqsSpec(region="cn-north-1", endpoint="http://sqs.cn-north-1.amazonaws.com.cn:80")
    assert spec_mod.SqsSpec(region="eu-west-1", endpoint="https://sqs.eu-west-1.amazonaws.com")
    assert spec_mod.SqsSpec(region="us-east-1", endpoint="http://elasticmq.dev.svc:9324")


def test_an_endpoint_with_a_path_or_credentials_is_refused() -> None:
    for endpoint in ("http://u:p@host:9324", "http://host:9324/queue", "ftp://host"):
        with pytest.raises(ValueError):
            spec_mod.SqsSpec(region="us-east-1", endpoint=endpoint)


def test_the_operators_pure_core_loads_no_aws_client_library() -> None:
    # manifests composes SQS names with the runtime's own settings module: importing it must not
    # pull in aiobotocore/botocore (the pure core does no I/O; the shell opens the probe)
    code = (
        "import sys, workerfleet_operator.manifests, workerfleet_operator.plan;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in {'aiobotocore','botocore'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _sqs_pool(**sqs: Any) -> api.Pool:
    body = crd_validation.load_sample("sqs")
    body["spec"]["queue"]["sqs"].update(sqs)
    body["metadata"].update(namespace="team-a", uid="uid-s", generation=1)
    parsed = api.parse_pool(body)
    assert isinstance(parsed, api.Pool), getattr(parsed, "message", "")
    return parsed


def _keda(pool: api.Pool) -> api.Pool:
    body = crd_validation.load_sample("sqs")
    body["spec"]["queue"]["sqs"] = pool.spec.queue.model_dump(by_alias=True, exclude_none=True)[
        "sqs"
    ]
    body["spec"]["autoscaling"] = {
        "mode": "keda",
        "minReplicas": 0,
        "maxReplicas": 20,
        "targetBacklogPerReplica": 20,
        "activationBacklog": 5,
    }
    body["metadata"].update(namespace="team-a", uid="uid-s", generation=1)
    parsed = api.parse_pool(body)
    assert isinstance(parsed, api.Pool), getattr(parsed, "message", "")
    return parsed


def _kinds(children: tuple[dict[str, Any], ...]) -> dict[str, dict[str, Any]]:
    return {c["kind"]: c for c in children}


def test_an_sqs_pool_runs_under_its_own_token_less_service_account_with_its_irsa_role() -> None:
    pool = _sqs_pool()
    children = _kinds(plan.build_children(pool, replicas=0))
    # the pool's own ServiceAccount: owned by the pool, no API token, the IRSA role annotated
    account = children["ServiceAccount"]
    assert account["metadata"]["name"] == "emails-sqs-worker"
    assert account["metadata"]["ownerReferences"][0]["uid"] == "uid-s"
    assert account["automountServiceAccountToken"] is False
    assert account["metadata"]["annotations"] == {
        "eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/workerfleet-emails"
    }
    pod = children["Deployment"]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "emails-sqs-worker"
    assert pod["automountServiceAccountToken"] is False
    # Pod Identity instead of IRSA: the same account, no annotation
    unannotated = _kinds(plan.build_children(_sqs_pool(roleArn=None), replicas=0))
    assert "annotations" not in unannotated["ServiceAccount"]["metadata"]


def test_the_workers_get_the_composed_sqs_url_as_a_plain_value_and_no_aws_key() -> None:
    pool = _sqs_pool()
    (container,) = manifests.build_deployment(pool, replicas=0)["spec"]["template"]["spec"][
        "containers"
    ]
    env = {e["name"]: e for e in container["env"]}
    assert env["WORKERFLEET_BROKER_URL"] == {
        "name": "WORKERFLEET_BROKER_URL",
        "value": "sqs://?region=eu-west-1",
    }
    assert "WORKERFLEET_REDIS_URL" not in env
    assert not [name for name in env if name.startswith("AWS_")]
    assert not [e for e in container["env"] if "secretKeyRef" in e.get("valueFrom", {})]


@pytest.mark.parametrize("size", [1024, 262_144, 1_048_576])
def test_max_message_bytes_from_1_kib_to_1_mib_is_accepted_by_the_model_and_the_crd(
    size: int,
) -> None:
    sqs = spec_mod.SqsSpec.model_validate({"region": "us-east-1", "maxMessageBytes": size})
    assert sqs.max_message_bytes == size
    body = crd_validation.load_sample("sqs")
    body["spec"]["queue"]["sqs"]["maxMessageBytes"] = size
    assert crd_validation.validate(api.build_crd(), body) == []


@pytest.mark.parametrize("size", [0, -1, 1023, 1_048_577, 10**9, "262144", 262_144.5])
def test_max_message_bytes_outside_what_sqs_takes_is_refused_by_the_model_and_the_crd(
    size: object,
) -> None:
    # Given a size SQS's MaximumMessageSize cannot be, or no whole number at all
    with pytest.raises(ValueError, match="maxMessageBytes"):
        spec_mod.SqsSpec.model_validate({"region": "us-east-1", "maxMessageBytes": size})
    body = crd_validation.load_sample("sqs")
    body["spec"]["queue"]["sqs"]["maxMessageBytes"] = size
    refused = crd_validation.validate(api.build_crd(), body)
    assert [v.path for v in refused] == ["spec.queue.sqs.maxMessageBytes"], refused


def test_an_sqs_pool_on_elasticmq_with_max_message_bytes_passes_it_to_its_workers() -> None:
    # Given a pool on an SQS-compatible server whose queues take 1 MiB messages
    pool = _sqs_pool(endpoint="http://elasticmq.queues.svc:9324", maxMessageBytes=1_048_576)
    # When its Deployment is built
    (container,) = manifests.build_deployment(pool, replicas=0)["spec"]["template"]["spec"][
        "containers"
    ]
    env = {e["name"]: e.get("value") for e in container["env"]}
    # Then the workers' broker URL carries it, and the runtime reads 1 MiB from that URL
    url = env["WORKERFLEET_BROKER_URL"]
    assert url == (
        "sqs://elasticmq.queues.svc:9324?region=eu-west-1&secure=false&max_message_bytes=1048576"
    )
    assert sqs_settings.parse_sqs_url(url).max_message_bytes == 1_048_576
    # And without it such a pool keeps the runtime's 256 KiB for servers that are not AWS
    default = manifests.encode_sqs_url(
        spec_mod.SqsSpec(region="eu-west-1", endpoint="http://elasticmq.queues.svc:9324")
    )
    assert "max_message_bytes" not in default
    assert sqs_settings.parse_sqs_url(default).max_message_bytes == 262_144
    # And the size names no other queue: pools on the same SQS queues still share an identity
    assert queue_mod.identify_queue(url, "emails") == queue_mod.identify_queue(default, "emails")


def test_a_redis_pool_keeps_the_namespaces_default_account_and_gets_no_service_account() -> None:
    body = crd_validation.load_sample("minimal")
    body["metadata"].update(namespace="team-a", uid="uid-r", generation=1)
    pool = api.parse_pool(body)
    assert isinstance(pool, api.Pool)
    children = _kinds(plan.build_children(pool, replicas=0))
    assert "ServiceAccount" not in children
    assert "serviceAccountName" not in children["Deployment"]["spec"]["template"]["spec"]
    # and a pool that leaves SQS loses the account it had
    refs = plan.build_optional_child_refs("team-a", "emails")
    assert ("ServiceAccount", "emails-worker") in {(r.kind, r.name) for r in refs}


def test_keda_mode_reads_every_priority_queue_with_an_aws_pod_identity_and_no_key() -> None:
    # Given a keda-mode SQS pool with an IRSA role
    children = _kinds(plan.build_children(_keda(_sqs_pool()), replicas=None))
    scaled, auth = children["ScaledObject"], children["TriggerAuthentication"]
    # Then one aws-sqs-queue trigger per priority queue, by full URL, counting in-flight jobs
    triggers = scaled["spec"]["triggers"]
    assert [t["metadata"]["queueURL"] for t in triggers] == [
        "https://sqs.eu-west-1.amazonaws.com/123456789012/emails-sqs-high",
        "https://sqs.eu-west-1.amazonaws.com/123456789012/emails-sqs",
        "https://sqs.eu-west-1.amazonaws.com/123456789012/emails-sqs-low",
    ]
    for trigger in triggers:
        assert trigger["type"] == "aws-sqs-queue"
        assert trigger["authenticationRef"] == {"name": auth["metadata"]["name"]}
        meta = trigger["metadata"]
        assert (meta["awsRegion"], meta["queueLength"], meta["activationQueueLength"]) == (
            "eu-west-1", "20", "4"
        )  # fmt: skip
        assert (meta["scaleOnInFlight"], meta["scaleOnDelayed"]) == ("true", "false")
        assert "awsEndpoint" not in meta
    # and KEDA uses the pool's own role (the workload's), never a key
    assert auth["metadata"]["name"] == "emails-sqs-sqs"
    assert auth["spec"] == {"podIdentity": {"provider": "aws", "identityOwner": "workload"}}
    # Without a pool role KEDA uses its own; with keda.roleArn it assumes that one
    own = _kinds(plan.build_children(_keda(_sqs_pool(roleArn=None)), replicas=None))
    assert own["TriggerAuthentication"]["spec"]["podIdentity"] == {
        "provider": "aws",
        "identityOwner": "keda",
    }
    role = "arn:aws:iam::123456789012:role/keda-reads-emails"
    assumed = _kinds(plan.build_children(_keda(_sqs_pool(keda={"roleArn": role})), replicas=None))
    assert assumed["TriggerAuthentication"]["spec"]["podIdentity"] == {
        "provider": "aws",
        "roleArn": role,
    }


def test_keda_on_an_sqs_compatible_server_reads_it_at_its_endpoint() -> None:
    pool = _keda(_sqs_pool(endpoint="http://elasticmq.queues.svc:9324", accountId="000000000000"))
    scaled = _kinds(plan.build_children(pool, replicas=None))["ScaledObject"]
    first = scaled["spec"]["triggers"][0]["metadata"]
    assert first["queueURL"] == "http://elasticmq.queues.svc:9324/000000000000/emails-sqs-high"
    assert first["awsEndpoint"] == "http://elasticmq.queues.svc:9324"


def test_pools_on_the_same_sqs_queues_share_an_identity_and_others_do_not() -> None:
    def where(**fields: Any) -> str:
        url = manifests.encode_sqs_url(spec_mod.SqsSpec(region="eu-west-1", **fields))
        return queue_mod.identify_queue(url, "emails")

    # the normal-priority queue names the set: with or without the priority queues, it is one
    assert where() == where(priorities=False) == "sqs://aws:eu-west-1 emails"
    others = {where(prefix="staging-"), where(fifo=True), where(endpoint="http://mq:9324")}
    assert where() not in others and len(others) == 3
    assert where(endpoint="http://mq:9324") == "sqs://http://mq:9324 emails"


async def test_the_console_reaches_an_sqs_pools_queue_without_reading_any_secret() -> None:
    body = crd_validation.load_sample("sqs")
    body["metadata"]["namespace"] = "team-a"
    # no client: an SQS pool's URL comes from its spec alone
    url, name = await inventory.fetch_queue_target(None, body)  # type: ignore[arg-type]
    assert (url, name) == ("sqs://?region=eu-west-1", "emails-sqs")
    assert inventory.build_pool_view(body).target == "SQS eu-west-1"
