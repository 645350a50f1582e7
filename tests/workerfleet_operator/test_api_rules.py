"""Every cross-field rule refuses the same objects in the API server (CEL) and in the model.

Each case starts from the minimal sample, breaks exactly one rule and expects both the CRD's
CEL rules (evaluated with cel-python) and ``api.parse_pool`` to refuse it with the rule's
message. A meta-test checks that every rule of the generated CRD has a case here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from workerfleet_operator import api

from tests.workerfleet_operator import crd_validation

CRD = api.build_crd()
Mutation = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class Case:
    id: str
    mutate: Mutation
    message: str


def _autoscaling(**fields: Any) -> Mutation:
    def mutate(obj: dict[str, Any]) -> None:
        obj["spec"].setdefault("autoscaling", {}).update(fields)

    return mutate


def _spec(**fields: Any) -> Mutation:
    def mutate(obj: dict[str, Any]) -> None:
        obj["spec"].update(fields)

    return mutate


def _keda_auth(obj: dict[str, Any]) -> None:
    obj["spec"]["queue"]["redis"]["keda"] = {"addressKey": "address"}


def _queue(**blocks: Any) -> Mutation:
    """Replace the sample's broker block(s) with ``blocks`` (None removes one)."""

    def mutate(obj: dict[str, Any]) -> None:
        queue = obj["spec"]["queue"]
        for name, block in blocks.items():
            if block is None:
                queue.pop(name, None)
            else:
                queue[name] = block

    return mutate


def _both(*mutations: Mutation) -> Mutation:
    def mutate(obj: dict[str, Any]) -> None:
        for m in mutations:
            m(obj)

    return mutate


def _rename(name: str) -> Mutation:
    def mutate(obj: dict[str, Any]) -> None:
        obj["metadata"]["name"] = name

    return mutate


def _subscription(name: str, topic: str, group: str) -> Mutation:
    def mutate(obj: dict[str, Any]) -> None:
        obj["spec"]["queue"]["name"] = name
        obj["spec"]["queue"]["subscription"] = {"topic": topic, "group": group}

    return mutate


SUBSCRIPTION_NAME = (
    "queue.name must be <topic>:<group> of queue.subscription: a subscription is an ordinary "
    "queue of that name (e.g. shop.order.placed:email)"
)
SUBSCRIPTION_REDIS_ONLY = (
    "queue.subscription needs queue.redis: topics (event subscriptions) are on Redis only "
    "today, not on the other brokers"
)
PAST_TENSE = (
    "subscription.topic must end in a past tense verb (an event is a fact that happened): "
    "e.g. shop.order.placed, mail.message.sent"
)
MIN_MAX = "minReplicas must not exceed maxReplicas"
FALLBACK = "onMetricFailure: fallback requires fallbackReplicas between minReplicas and maxReplicas"
KEDA_DRY_RUN = "dryRun is not supported in keda mode: KEDA applies its own decisions"
DISABLED_NEEDS_REPLICAS = "mode: disabled requires replicas"
REPLICAS_ONLY_DISABLED = (
    "replicas is only used when mode is disabled (use minReplicas and maxReplicas otherwise)"
)
BACKOFF = "backoff baseSeconds must not exceed maxSeconds"
ENV_ONE_OF = "exactly one of value or valueFrom.secretKeyRef must be set"
ENV_RESERVED = "this name is set by the operator from the WorkerPool spec"
LEASE = (
    "leaseSeconds must not exceed jobTimeoutSeconds: a crashed worker's jobs would wait longer "
    "for redelivery than any job may run"
)
KEDA_AUTH = (
    "autoscaling.mode: keda requires the broker block's keda keys (queue.redis.keda or "
    "queue.rabbitmq.keda: the Secret keys KEDA reads)"
)
ONE_BROKER = "exactly one broker block must be set: redis or rabbitmq or sqs"
AGE_ALONE = (
    "targetOldestJobAgeSeconds cannot be the only signal on a broker that does not report the "
    "oldest job's age (only redis does): turn on targetBacklogPerReplica or targetUtilization "
    "too, or the pool would never wake from zero replicas"
)
RABBITMQ_KEDA_USER = "keda.usernameKey and keda.passwordKey must be set together"
RABBITMQ = {"urlSecretRef": {"name": "rabbitmq-creds", "key": "url"}}
SQS = {"region": "eu-west-1"}
SQS_HTTP_TO_AWS = (
    "endpoint: an AWS endpoint takes https:// (plain http:// is only for an SQS-compatible "
    "server such as ElasticMQ or LocalStack)"
)
SQS_QUEUE_NAME = (
    "on SQS the queue name allows only letters, digits, - and _, and at most 70 characters with "
    "sqs.prefix (SQS queue names are 80 characters with -high.fifo)"
)
SQS_NAME_OF_ANOTHER_QUEUE = (
    "on SQS the queue name (with sqs.prefix) must not end in -high, -low or -dlq: a queue Q is "
    "the SQS queues Q-high, Q, Q-low and Q-dlq, so such a name would share another queue's SQS "
    "queues (emails-high is the high queue of emails, emails-dlq its dead letters): choose "
    "another name or sqs.prefix"
)
SQS_KEDA_ACCOUNT = (
    "autoscaling.mode: keda on SQS requires queue.sqs.accountId (KEDA's aws-sqs-queue scaler "
    "reads queues by their full URL)"
)
POD_MONITOR_LABELS = (
    "podMonitorLabels cannot set app.kubernetes.io/* or workerfleet.io/* labels "
    "(the operator's own)"
)
NO_SIGNAL = (
    "at least one of targetBacklogPerReplica, targetUtilization and targetOldestJobAgeSeconds "
    "must be above 0 (0 turns a signal off)"
)
KEDA_BACKLOG = (
    "autoscaling.mode: keda scales on the backlog: targetBacklogPerReplica must be above 0"
)
NAME = (
    "metadata.name must be a DNS-1035 label of at most 55 characters "
    "(it names the pool's Deployment and Service)"
)

CASES = (
    Case(
        "every signal off",
        _autoscaling(targetBacklogPerReplica=0, targetUtilization=0, targetOldestJobAgeSeconds=0),
        NO_SIGNAL,
    ),
    Case(
        "keda without the backlog signal",
        _both(_keda_auth, _autoscaling(mode="keda", targetBacklogPerReplica=0)),
        KEDA_BACKLOG,
    ),
    Case("min above max", _autoscaling(minReplicas=5, maxReplicas=3), MIN_MAX),
    Case("fallback without replicas", _autoscaling(onMetricFailure="fallback"), FALLBACK),
    Case(
        "fallback above max",
        _autoscaling(onMetricFailure="fallback", fallbackReplicas=11, maxReplicas=10),
        FALLBACK,
    ),
    Case(
        "fallback below min",
        _autoscaling(onMetricFailure="fallback", fallbackReplicas=1, minReplicas=2),
        FALLBACK,
    ),
    Case("keda dry run", _both(_keda_auth, _autoscaling(mode="keda", dryRun=True)), KEDA_DRY_RUN),
    Case("disabled without replicas", _autoscaling(mode="disabled"), DISABLED_NEEDS_REPLICAS),
    Case("replicas in builtin mode", _autoscaling(replicas=3), REPLICAS_ONLY_DISABLED),
    Case(
        "replicas in keda mode",
        _both(_keda_auth, _autoscaling(mode="keda", replicas=3)),
        REPLICAS_ONLY_DISABLED,
    ),
    Case(
        "backoff base above max",
        _spec(retry={"backoff": {"baseSeconds": 10, "maxSeconds": 5}}),
        BACKOFF,
    ),
    Case(
        "pod monitor label of the operator's",
        _spec(metrics={"podMonitorLabels": {"workerfleet.io/pool": "other"}}),
        POD_MONITOR_LABELS,
    ),
    Case("env without a value", _spec(env=[{"name": "A"}]), ENV_ONE_OF),
    Case(
        "env with value and secret",
        _spec(
            env=[
                {
                    "name": "A",
                    "value": "x",
                    "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}},
                }
            ]
        ),
        ENV_ONE_OF,
    ),
    Case(
        "env overriding the redis url",
        _spec(env=[{"name": "WORKERFLEET_REDIS_URL", "value": "redis://elsewhere:6379"}]),
        ENV_RESERVED,
    ),
    Case(
        "env overriding the broker url",
        _spec(env=[{"name": "WORKERFLEET_BROKER_URL", "value": "amqp://elsewhere:5672/"}]),
        ENV_RESERVED,
    ),
    Case(
        "env overriding the queue",
        _spec(env=[{"name": "WORKERFLEET_QUEUE", "value": "q"}]),
        ENV_RESERVED,
    ),
    Case("lease above job timeout", _spec(leaseSeconds=120, jobTimeoutSeconds=60), LEASE),
    Case("keda without secret keys", _autoscaling(mode="keda"), KEDA_AUTH),
    Case("two broker blocks", _queue(rabbitmq=RABBITMQ), ONE_BROKER),
    Case("no broker block", _queue(redis=None), ONE_BROKER),
    Case(
        "keda on rabbitmq without secret keys",
        _both(_queue(redis=None, rabbitmq=RABBITMQ), _autoscaling(mode="keda")),
        KEDA_AUTH,
    ),
    Case(
        "the age signal alone on rabbitmq",
        _both(
            _queue(redis=None, rabbitmq=RABBITMQ),
            _autoscaling(
                targetBacklogPerReplica=0, targetUtilization=0, targetOldestJobAgeSeconds=30
            ),
        ),
        AGE_ALONE,
    ),
    Case(
        "a rabbitmq keda user without a password",
        _queue(
            redis=None,
            rabbitmq={**RABBITMQ, "keda": {"hostKey": "management", "usernameKey": "user"}},
        ),
        RABBITMQ_KEDA_USER,
    ),
    Case(
        "a subscription whose queue has another name",
        _subscription("emails", "shop.order.placed", "email"),
        SUBSCRIPTION_NAME,
    ),
    Case(
        "a subscription whose queue names another group",
        _subscription("shop.order.placed:analytics", "shop.order.placed", "email"),
        SUBSCRIPTION_NAME,
    ),
    Case(
        "a subscription to a topic that is not a past event",
        _subscription("shop.order.place:email", "shop.order.place", "email"),
        PAST_TENSE,
    ),
    Case(
        "a subscription on rabbitmq",
        _both(
            _subscription("shop.order.placed:email", "shop.order.placed", "email"),
            _queue(redis=None, rabbitmq=RABBITMQ),
        ),
        SUBSCRIPTION_REDIS_ONLY,
    ),
    Case("redis and sqs", _queue(sqs=SQS), ONE_BROKER),
    Case(
        "plain http to an AWS endpoint",
        _queue(redis=None, sqs={**SQS, "endpoint": "http://sqs.eu-west-1.amazonaws.com"}),
        SQS_HTTP_TO_AWS,
    ),
    Case(
        "a queue name with a dot on sqs",
        _both(_queue(redis=None, sqs=SQS), _queue(name="emails.v2")),
        SQS_QUEUE_NAME,
    ),
    Case(
        "a queue name too long for sqs with its prefix",
        _both(_queue(redis=None, sqs={**SQS, "prefix": "p" * 11}), _queue(name="q" * 60)),
        SQS_QUEUE_NAME,
    ),
    Case(
        "a queue name ending like the high queue of another on sqs",
        _both(_queue(redis=None, sqs=SQS), _queue(name="emails-high")),
        SQS_NAME_OF_ANOTHER_QUEUE,
    ),
    Case(
        "a queue name ending like the low queue of another on a fifo sqs set without priorities",
        _both(
            _queue(redis=None, sqs={**SQS, "fifo": True, "priorities": False}),
            _queue(name="emails-low"),
        ),
        SQS_NAME_OF_ANOTHER_QUEUE,
    ),
    Case(
        "a queue name that the sqs prefix makes the dead letter queue of another",
        _both(_queue(redis=None, sqs={**SQS, "prefix": "emails-"}), _queue(name="dlq")),
        SQS_NAME_OF_ANOTHER_QUEUE,
    ),
    Case(
        "keda on sqs without the account",
        _both(_queue(redis=None, sqs=SQS), _autoscaling(mode="keda")),
        SQS_KEDA_ACCOUNT,
    ),
    Case(
        "the age signal alone on sqs",
        _both(
            _queue(redis=None, sqs=SQS),
            _autoscaling(
                targetBacklogPerReplica=0, targetUtilization=0, targetOldestJobAgeSeconds=30
            ),
        ),
        AGE_ALONE,
    ),
    Case("upper-case name", _rename("Emails"), NAME),
    Case("name too long for the metrics service", _rename("a" * 56), NAME),
)


def _broken(case: Case) -> dict[str, Any]:
    obj = crd_validation.load_sample("minimal")
    case.mutate(obj)
    return obj


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_the_api_server_refuses_an_object_breaking_a_rule_with_its_message(case: Case) -> None:
    messages = [v.message for v in crd_validation.validate(CRD, _broken(case))]
    assert messages == [case.message]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_the_model_refuses_the_same_object_with_the_same_message(case: Case) -> None:
    parsed = api.parse_pool(_broken(case))
    assert isinstance(parsed, api.InvalidPool)
    assert case.message in parsed.message
    assert parsed.message.count(";") == 0, "exactly one problem is reported"


QUEUE_RENAME_MESSAGE = (
    "queue.name is immutable: renaming would orphan the old queue's backlog, delayed jobs and "
    "dead letters (create a new WorkerPool for another queue)"
)
TRANSITION_MESSAGES = {QUEUE_RENAME_MESSAGE}
"""Rules that compare an update with the stored object (``oldSelf``): refused on update only."""


def test_every_cel_rule_of_the_crd_has_a_refusal_case() -> None:
    root = crd_validation.build_root_schema(CRD)
    rule_messages = {entry["message"] for _, entry in crd_validation.iter_rules(root)}
    assert rule_messages == {case.message for case in CASES} | TRANSITION_MESSAGES


def test_renaming_the_queue_is_refused_on_update_and_a_new_pool_may_take_any_queue() -> None:
    stored = crd_validation.load_sample("minimal")
    renamed = crd_validation.load_sample("minimal")
    renamed["spec"]["queue"]["name"] = "emails-v2"
    # a new object (no stored version) may name any queue; the model, without one, accepts it
    assert crd_validation.validate(CRD, renamed) == []
    assert isinstance(api.parse_pool(renamed), api.Pool)
    # an update renaming the queue is refused; one changing anything else is not
    refused = crd_validation.validate(CRD, renamed, old=stored)
    assert [v.message for v in refused] == [QUEUE_RENAME_MESSAGE]
    other = crd_validation.load_sample("minimal")
    other["spec"]["image"] = "registry.example/email-worker:9.9.9"
    assert crd_validation.validate(CRD, other, old=stored) == []


VALID_EDGES = (
    ("min equals max", _autoscaling(minReplicas=3, maxReplicas=3)),
    ("backlog signal only", _autoscaling(targetUtilization=0)),
    ("capacity signal only", _autoscaling(targetBacklogPerReplica=0)),
    (
        "latency signal only",
        _autoscaling(targetBacklogPerReplica=0, targetUtilization=0, targetOldestJobAgeSeconds=30),
    ),
    ("fallback at min", _autoscaling(onMetricFailure="fallback", fallbackReplicas=0)),
    ("fallback at max", _autoscaling(onMetricFailure="fallback", fallbackReplicas=10)),
    ("disabled with replicas", _autoscaling(mode="disabled", replicas=0)),
    ("keda with secret keys", _both(_keda_auth, _autoscaling(mode="keda"))),
    ("builtin dry run", _autoscaling(dryRun=True)),
    ("backoff base equals max", _spec(retry={"backoff": {"baseSeconds": 5, "maxSeconds": 5}})),
    ("lease equals job timeout", _spec(leaseSeconds=60, jobTimeoutSeconds=60)),
    ("log level is the user's", _spec(env=[{"name": "WORKERFLEET_LOG_LEVEL", "value": "debug"}])),
    ("name of 55 characters", _rename("a" * 55)),
    ("rabbitmq instead of redis", _queue(redis=None, rabbitmq=RABBITMQ)),
    ("sqs instead of redis", _queue(redis=None, sqs=SQS)),
    (
        "plain http to an sqs-compatible server, keda with the account",
        _both(
            _queue(
                redis=None,
                sqs={**SQS, "endpoint": "http://elasticmq.q.svc:9324", "accountId": "0" * 12},
            ),
            _autoscaling(mode="keda"),
        ),
    ),
    (
        "an sqs queue name of 70 characters with its prefix",
        _both(_queue(redis=None, sqs={**SQS, "prefix": "p" * 10}), _queue(name="q" * 60)),
    ),
    (
        "sqs queue names only containing -high, -low or -dlq",
        _both(_queue(redis=None, sqs={**SQS, "prefix": "high-"}), _queue(name="emails-highway")),
    ),
    ("a queue named like a dead letter queue on redis", _queue(name="emails-dlq")),
    (
        "a queue named like a high queue on rabbitmq",
        _both(_queue(redis=None, rabbitmq=RABBITMQ), _queue(name="emails-high")),
    ),
    (
        "the age signal with the backlog signal on rabbitmq",
        _both(
            _queue(redis=None, rabbitmq=RABBITMQ),
            _autoscaling(targetUtilization=0, targetOldestJobAgeSeconds=30),
        ),
    ),
    (
        "the age signal alone on rabbitmq at a fixed replica count",
        _both(
            _queue(redis=None, rabbitmq=RABBITMQ),
            _autoscaling(
                mode="disabled",
                replicas=2,
                targetBacklogPerReplica=0,
                targetUtilization=0,
                targetOldestJobAgeSeconds=30,
            ),
        ),
    ),
    (
        "keda on rabbitmq with the management key",
        _both(
            _queue(redis=None, rabbitmq={**RABBITMQ, "keda": {"hostKey": "management"}}),
            _autoscaling(mode="keda"),
        ),
    ),
    ("a PodMonitor without extra labels", _spec(metrics={"podMonitor": True})),
    (
        "a subscription named <topic>:<group>",
        _subscription("shop.order.placed:email", "shop.order.placed", "email"),
    ),
    (
        "a subscription to an irregular past tense",
        _subscription("mail.message.sent:audit", "mail.message.sent", "audit"),
    ),
)


@pytest.mark.parametrize("mutate", [m for _, m in VALID_EDGES], ids=[i for i, _ in VALID_EDGES])
def test_objects_at_the_edge_of_a_rule_are_accepted_by_both(mutate: Mutation) -> None:
    obj = crd_validation.load_sample("minimal")
    mutate(obj)
    assert crd_validation.validate(CRD, obj) == []
    assert isinstance(api.parse_pool(obj), api.Pool)


SCHEMA_REFUSALS: tuple[tuple[str, Mutation], ...] = (
    ("lease below 3 s", _spec(leaseSeconds=2)),
    ("zero concurrency", _spec(concurrency=0)),
    ("unknown mode", _autoscaling(mode="hpa")),
    ("utilization above 1", _autoscaling(targetUtilization=1.5)),
    ("a negative backlog target", _autoscaling(targetBacklogPerReplica=-1)),
    ("negative drain", _spec(drain={"timeoutSeconds": -1})),
    ("privileged port for metrics", _spec(metrics={"port": 80})),
    ("volumes", _spec(volumes=[{"name": "host", "hostPath": {"path": "/"}}])),
    ("a service account", _spec(serviceAccountName="admin")),
    ("a security context", _spec(securityContext={"privileged": True})),
    (
        "env from a config map",
        _spec(env=[{"name": "A", "valueFrom": {"configMapKeyRef": {"name": "c", "key": "k"}}}]),
    ),
    ("a cpu quantity that is not one", _spec(resources={"requests": {"cpu": "lots"}})),
    ("a string number", _spec(concurrency="8")),
    (
        "a queue name with braces",
        _spec(queue={"name": "a{b}", "redis": {"urlSecretRef": {"name": "r", "key": "url"}}}),
    ),
    ("an app without attribute", _spec(app="emails.tasks")),
    (
        "a subscription topic of two words",
        _subscription("order.placed:email", "order.placed", "email"),
    ),
    (
        "a subscription group in upper case",
        _subscription("shop.order.placed:Email", "shop.order.placed", "Email"),
    ),
    ("duplicate env names", _spec(env=[{"name": "A", "value": "1"}, {"name": "A", "value": "2"}])),
    (
        "pdb budget that is not a percentage",
        _spec(podDisruptionBudget={"enabled": True, "maxUnavailable": "half"}),
    ),
)


@pytest.mark.parametrize(
    "mutate", [m for _, m in SCHEMA_REFUSALS], ids=[i for i, _ in SCHEMA_REFUSALS]
)
def test_out_of_bounds_or_unknown_fields_are_refused_by_both(mutate: Mutation) -> None:
    obj = crd_validation.load_sample("minimal")
    mutate(obj)
    assert crd_validation.validate(CRD, obj) != []
    parsed = api.parse_pool(obj)
    assert isinstance(parsed, api.InvalidPool)
    assert parsed.message.startswith("spec")


def test_model_messages_name_the_field_and_never_echo_its_value() -> None:
    obj = crd_validation.load_sample("minimal")
    obj["spec"]["image"] = ""
    obj["spec"]["env"] = [{"name": "TOKEN", "value": "canary-s3cr3t", "extra": 1}]
    parsed = api.parse_pool(obj)
    assert isinstance(parsed, api.InvalidPool)
    assert "spec.image:" in parsed.message
    assert "spec.env.0.extra:" in parsed.message
    assert "canary-s3cr3t" not in parsed.message


def test_a_body_without_spec_is_invalid_not_a_crash() -> None:
    parsed = api.parse_pool({"metadata": {"name": "emails", "namespace": "ns", "generation": 2}})
    assert isinstance(parsed, api.InvalidPool)
    assert (parsed.name, parsed.namespace, parsed.generation) == ("emails", "ns", 2)
    assert parsed.message == "spec: required"
