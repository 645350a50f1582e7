"""The WorkerPool spec as pydantic models: THE one source of truth for the WorkerPool schema.

Who uses it: :mod:`workerfleet_operator.api.crd` generates the CRD's ``openAPIV3Schema`` (field
descriptions, defaults, bounds and CEL ``x-kubernetes-validations``) from these models; the
operator's shell parses every WorkerPool with :class:`WorkerPoolSpec` (see
:func:`workerfleet_operator.api.pool.parse_pool`) so that bad input is explained with the same
messages the API server would give; the pure builders in ``manifests`` and ``plan`` read it.

Cross-field rules are declared once, as :class:`Rule` objects that carry both the CEL expression
(for the API server) and a Python predicate (for the model). ``test_api_rules`` proves, rule by
rule, that a violating object is rejected by both with the same message.

Lease consistency (reliability brief, item 5). The rules, and why:

- ``leaseSeconds >= 3``: workers renew held leases every ``leaseSeconds / 3``; below 1 s that
  renewal would compete with the jobs for the event loop and the Redis connection.
- ``leaseSeconds <= jobTimeoutSeconds``: the lease bounds how long a crashed worker's jobs wait
  before they are delivered again. A job never legitimately runs longer than its timeout, so a
  lease longer than the timeout only delays crash recovery.
- ``retry.backoff.baseSeconds <= retry.backoff.maxSeconds``: otherwise the cap would undercut
  the first delay. Retries wait in Redis (the delayed set), not under a lease, so no rule ties
  the delays to ``leaseSeconds`` beyond the upper bound of one day per delay.
- ``drain.timeoutSeconds``: the operator sets ``terminationGracePeriodSeconds`` to the drain
  budget plus a fixed margin (see ``manifests.GRACE_MARGIN_SECONDS``), so the drain always ends
  before the kubelet's SIGKILL; the bound (1 h) keeps rollouts finite.

Security (brief, check 4): the spec has no field that could pass a pod spec, volume, host path,
privileged flag, capability or service account to the worker pods; env values are plain strings
or ``secretKeyRef`` only. An SQS pool runs under a ServiceAccount of its own that the operator
creates (``<pool>-worker``, no API token); ``sqs.roleArn`` may name an IAM role for it (the IRSA
annotation, which the role's trust policy must accept), never another ServiceAccount.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    WithJsonSchema,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import PydanticCustomError, core_schema

from worker_runtime import errors, events
from worker_runtime.brokers import base
from worker_runtime.brokers.sqs import settings as sqs_settings

# --- shared vocabulary -----------------------------------------------------------------------

QUEUE_NAME_PATTERN = base.QUEUE_NAME_PATTERN
"""The runtime's queue-name pattern, defined once there (the CRD schema repeats it)."""

_DOTTED_NAME = r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*"
APP_PATTERN = f"^{_DOTTED_NAME}:{_DOTTED_NAME}$"
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
SECRET_KEY_PATTERN = r"^[-._a-zA-Z0-9]+$"
ENV_NAME_PATTERN = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"
QUANTITY_PATTERN = (
    r"^(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
PERCENT_PATTERN = r"^[0-9]+%$"

ObjectName = Annotated[str, Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN)]
"""The name of a Kubernetes object the pool refers to (a Secret, by DNS-subdomain rules)."""
SecretKey = Annotated[str, Field(min_length=1, max_length=253, pattern=SECRET_KEY_PATTERN)]
"""A key inside a Secret."""

OPERATOR_ENV_NAMES: tuple[str, ...] = (
    "WORKERFLEET_REDIS_URL",
    "WORKERFLEET_BROKER_URL",
    "WORKERFLEET_QUEUE",
    "WORKERFLEET_APP",
    "WORKERFLEET_CONCURRENCY",
    "WORKERFLEET_LEASE_SECONDS",
    "WORKERFLEET_JOB_TIMEOUT_SECONDS",
    "WORKERFLEET_DRAIN_TIMEOUT_SECONDS",
    "WORKERFLEET_RETRY_MAX_ATTEMPTS",
    "WORKERFLEET_RETRY_MAX_DELIVERIES",
    "WORKERFLEET_RETRY_BACKOFF_STRATEGY",
    "WORKERFLEET_RETRY_BACKOFF_BASE_SECONDS",
    "WORKERFLEET_RETRY_BACKOFF_MAX_SECONDS",
    "WORKERFLEET_RETRY_BACKOFF_JITTER",
    "WORKERFLEET_DLQ_MAX_LENGTH",
    "WORKERFLEET_DLQ_RETENTION_SECONDS",
    "WORKERFLEET_RATE_LIMIT_JOBS",
    "WORKERFLEET_RATE_LIMIT_PER_SECONDS",
    "WORKERFLEET_METRICS_PORT",
    "WORKERFLEET_POD_NAME",
    "WORKERFLEET_POD_NAMESPACE",
)
"""Env names the operator sets on worker pods (``docs/architecture.md``); ``spec.env`` may not."""


@dataclass(frozen=True)
class Rule:
    """One cross-field rule, stated twice: CEL for the API server, Python for the model.

    ``field_path`` (relative to the object the rule sits on) points ``kubectl`` users at the
    field to change; the API server requires it to name a field of the schema.
    """

    cel: str
    message: str
    check: Callable[[Any], bool]
    field_path: str | None = None

    def build_validation(self) -> dict[str, str]:
        """The rule as one entry of ``x-kubernetes-validations``."""
        entry = {"rule": self.cel, "message": self.message}
        if self.field_path is not None:
            entry["fieldPath"] = self.field_path
        return entry


class SpecModel(BaseModel):
    """Base of every spec model: camelCase on the wire, unknown fields refused, immutable.

    Subclasses list their cross-field :class:`Rule` objects in ``cel_rules``; they become the
    schema's ``x-kubernetes-validations`` and are checked by the model validator below.
    """

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        # JSON has no "5" for 5: refuse coercions the API server would refuse too.
        strict=True,
    )

    cel_rules: ClassVar[tuple[Rule, ...]] = ()

    @model_validator(mode="before")
    @classmethod
    def _prune_nulls_like_the_api_server(cls, data: Any) -> Any:
        # The API server prunes an explicit null on a non-nullable field and then applies the
        # field's default; reading a manifest locally (`workerfleet run`) must give the same
        # spec as the cluster stores, so a null is dropped here before defaults apply.
        if isinstance(data, dict):
            return {key: value for key, value in data.items() if value is not None}
        return data

    @model_validator(mode="after")
    def _check_cel_rules(self) -> Self:
        for rule in type(self).cel_rules:
            if not rule.check(self):
                # A custom error keeps the message exactly as the API server prints it.
                raise PydanticCustomError("workerpool_rule", rule.message)
        return self

    @classmethod
    def __get_pydantic_json_schema__(
        cls, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        json_schema = handler(schema)
        target = handler.resolve_ref_schema(json_schema)
        if cls.cel_rules:
            target["x-kubernetes-validations"] = [r.build_validation() for r in cls.cel_rules]
        return json_schema


def _build_int_or_string_check(
    pattern: str, *, what: str, example: str
) -> Callable[[int | str], int | str]:
    """The validator of an ``int | str`` field: a non-negative integer or a matching string."""

    def check(value: int | str) -> int | str:
        if isinstance(value, bool):
            raise ValueError(f"expected an integer or {what} such as {example}")
        if isinstance(value, int):
            if value < 0:
                raise ValueError("must not be negative")
            return value
        if not re.match(pattern, value):
            raise ValueError(f"{value!r} is neither an integer nor {what} such as {example}")
        return value

    return check


def _build_int_or_string_schema(pattern: str) -> WithJsonSchema:
    """The CRD schema of an ``int | str`` field (Kubernetes' ``x-kubernetes-int-or-string``)."""
    return WithJsonSchema(
        {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "pattern": pattern,
            "x-kubernetes-int-or-string": True,
        }
    )


Quantity = Annotated[
    int | str,
    AfterValidator(
        _build_int_or_string_check(QUANTITY_PATTERN, what="a quantity", example="500m or 1Gi")
    ),
    _build_int_or_string_schema(QUANTITY_PATTERN),
]

IntOrPercent = Annotated[
    int | str,
    AfterValidator(_build_int_or_string_check(PERCENT_PATTERN, what="a percentage", example="25%")),
    _build_int_or_string_schema(PERCENT_PATTERN),
]


def _object_default(model: type[BaseModel]) -> dict[str, Any]:
    # Kubernetes applies nested defaults only below an object that exists, and it checks a
    # default against the CEL rules as written (without nested defaulting), so the default of
    # an optional object is the model's complete default, spelled out.
    return {"default": model().model_dump(by_alias=True, exclude_none=True, mode="json")}


# --- queue -----------------------------------------------------------------------------------


class SecretKeyRef(SpecModel):
    """A key of a Secret in the WorkerPool's namespace."""

    name: ObjectName = Field(
        description="Name of the Secret, in the WorkerPool's namespace.",
    )
    key: SecretKey = Field(
        description="Key inside the Secret.",
    )


class KedaRedisAuth(SpecModel):
    """Keys of the same Secret in the form KEDA's redis-streams scaler reads (host:port, not a URL).

    KEDA cannot parse a Redis URL, so ``autoscaling.mode: keda`` needs the address (and, when the
    server requires them, the ACL user and password) as separate keys of the Secret named in
    ``urlSecretRef``. The operator only references these keys; it never copies their values.
    """

    address_key: SecretKey = Field(
        description="Key whose value is the Redis address as host:port.",
    )
    username_key: SecretKey | None = Field(
        default=None,
        description="Key whose value is the Redis ACL user name (optional).",
    )
    password_key: SecretKey | None = Field(
        default=None,
        description="Key whose value is the Redis password (optional).",
    )
    enable_tls: bool = Field(
        default=False,
        alias="enableTLS",
        description="Connect with TLS (set when the URL scheme is rediss://).",
    )
    database_index: int = Field(
        default=0, ge=0, le=15, description="Redis database number (the URL path /N)."
    )


class RedisSpec(SpecModel):
    """Where the queue's Redis is; the URL lives in a Secret, never in the WorkerPool."""

    url_secret_ref: SecretKeyRef = Field(
        description=(
            "Secret key holding the Redis URL (redis://, rediss://, unix://, "
            "redis+sentinel://h1:26379,h2:26379/service, redis+cluster://, with an ACL user and "
            "password if needed). Passed to workers only as a secretKeyRef."
        )
    )
    keda: KedaRedisAuth | None = Field(
        default=None,
        description="Secret keys KEDA reads; required when autoscaling.mode is keda.",
    )


def _cel_string_list(values: list[str]) -> str:
    return "[" + ", ".join(f"'{v}'" for v in values) + "]"


def _is_past_tense(topic: str) -> bool:
    verb = topic.rsplit(".", 1)[-1]
    return verb.endswith("ed") or verb in events.IRREGULAR_PAST


class SubscriptionSpec(SpecModel):
    """The event subscription this pool's queue serves (docs/events.md).

    A subscription is an ordinary queue named ``<topic>:<group>``: every event published on the
    topic puts one job in it. The operator registers the subscription in the broker (idempotent,
    checked again every few minutes) so events published from then on reach the queue even
    while the pool is at zero replicas, and scales the pool on that queue's backlog like any
    other (the subscription's lag). It never unregisters one: deleting the pool leaves the
    subscription and its queue in place (``workerfleet topic lag`` shows them).
    """

    cel_rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel=(
                "self.topic.endsWith('ed') || "
                + _cel_string_list(sorted(events.IRREGULAR_PAST))
                + ".exists(v, self.topic.endsWith('.' + v))"
            ),
            message=(
                "subscription.topic must end in a past tense verb (an event is a fact that "
                "happened): e.g. shop.order.placed, mail.message.sent"
            ),
            check=lambda s: _is_past_tense(s.topic),
            field_path=".topic",
        ),
    )

    topic: str = Field(
        min_length=5,
        max_length=64,
        pattern=events.EVENT_TYPE_PATTERN,
        description=(
            "The event type, domain.entity.past_tense_verb (three lower-case words joined by "
            "dots, e.g. shop.order.placed)."
        ),
    )
    group: str = Field(
        min_length=1,
        max_length=63,
        pattern=events.GROUP_PATTERN,
        description=(
            "The subscription group (lower case, digits, - and _): each group of a topic gets "
            "every event once, in its own queue <topic>:<group>."
        ),
    )


AWS_REGION_PATTERN = r"^[a-z]{2}(-[a-z]+)+-[0-9]+$"
AWS_ACCOUNT_PATTERN = r"^[0-9]{12}$"
IAM_ROLE_ARN_PATTERN = r"^arn:aws(-[a-z]+)*:iam::[0-9]{12}:role/[A-Za-z0-9+=,.@_/-]{1,512}$"
SQS_ENDPOINT_PATTERN = r"^https?://[A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?(:[0-9]{1,5})?$"
SQS_QUEUE_NAME_ROOM = sqs_settings.SQS_NAME_MAX - len("-high.fifo")
"""Longest queue name (with ``sqs.prefix``) whose SQS queues all fit SQS's 80 characters."""
_AWS_HOST_END = r"\.amazonaws\.com(\.cn)?(:[0-9]+)?$"


_SQS_PREFIX_CEL = "(has(self.sqs.prefix) ? self.sqs.prefix : '')"
_SQS_ENDINGS_TEXT = (
    ", ".join(sqs_settings.RESERVED_ENDINGS[:-1]) + " or " + sqs_settings.RESERVED_ENDINGS[-1]
)


def _sqs_base_name(sqs: SqsSpec, queue: str) -> str:
    """The name the queue's SQS queues are built from: ``sqs.prefix`` and the queue name."""
    return sqs.prefix + queue


def _ends_like_another_queue(sqs: SqsSpec, queue: str) -> bool:
    return _sqs_base_name(sqs, queue).endswith(sqs_settings.RESERVED_ENDINGS)


def _fits_sqs(queue: QueueSpec) -> bool:
    """Whether SQS can hold the queue's names (characters and length), by the runtime's own
    check (``worker_runtime.brokers.sqs.settings.build_queue_names``).

    That check also refuses a name ending in one of the runtime's ``RESERVED_ENDINGS``, which
    the next rule reports with its own message; so the name is checked here with the ending's
    ``-`` read as ``_``: SQS allows both, the length is the same, and no reserved ending is
    left (each starts with ``-``), so only characters and length decide.
    """
    if queue.sqs is None:
        return True
    base = _sqs_base_name(queue.sqs, queue.name)
    if _ends_like_another_queue(queue.sqs, queue.name):
        cut = base.rindex("-")
        base = f"{base[:cut]}_{base[cut + 1 :]}"
    try:
        sqs_settings.build_queue_names(base, sqs_settings.SqsSettings(fifo=queue.sqs.fifo))
    except errors.InvalidQueueName:
        return False
    return True


class KedaSqsAuth(SpecModel):
    """Whose AWS identity KEDA's aws-sqs-queue scaler reads the queues with.

    The TriggerAuthentication the operator renders uses KEDA's ``podIdentity`` provider ``aws``
    (IRSA or EKS Pod Identity on KEDA's side), never an access key: with ``roleArn`` KEDA's
    operator assumes that role; without it, the pool's own role (``sqs.roleArn``,
    ``identityOwner: workload``) when set, else KEDA operator's own role (``identityOwner:
    keda``).
    """

    role_arn: str | None = Field(
        default=None,
        max_length=2048,
        pattern=IAM_ROLE_ARN_PATTERN,
        description=(
            "IAM role KEDA's operator assumes to read the queue depth (podIdentity.roleArn; "
            "the role's trust policy must let KEDA's own role assume it). Unset: the pool's "
            "sqs.roleArn (identityOwner: workload), else KEDA operator's own role."
        ),
    )


class SqsSpec(SpecModel):
    """Where the queue's SQS queues are. No Secret and no access key: the workers and the
    operator take credentials from the standard AWS chain (IRSA or EKS Pod Identity in a
    cluster). A workerfleet queue Q is the SQS queues Q-high, Q, Q-low and Q-dlq (with
    ``prefix`` before and ``.fifo`` after each name on a FIFO set); workers create missing ones.

    The worker pods run under a ServiceAccount of their own, ``<pool>-worker``, created by the
    operator without a Kubernetes API token: bind an IAM role to it with IRSA (``roleArn``) or
    with an EKS Pod Identity association for that namespace and name.
    """

    cel_rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel=(
                "!has(self.endpoint) || !self.endpoint.startsWith('http://') || "
                # a CEL string literal: each backslash of the regex doubled
                "!self.endpoint.matches('" + _AWS_HOST_END.replace("\\", "\\\\") + "')"
            ),
            message=(
                "endpoint: an AWS endpoint takes https:// (plain http:// is only for an "
                "SQS-compatible server such as ElasticMQ or LocalStack)"
            ),
            check=lambda q: (
                q.endpoint is None
                or not q.endpoint.startswith("http://")
                or re.search(_AWS_HOST_END, q.endpoint) is None
            ),
            field_path=".endpoint",
        ),
    )

    region: str = Field(
        min_length=1,
        max_length=32,
        pattern=AWS_REGION_PATTERN,
        description="AWS region of the queues, e.g. eu-west-1 (any region name for ElasticMQ).",
    )
    endpoint: str | None = Field(
        default=None,
        max_length=256,
        pattern=SQS_ENDPOINT_PATTERN,
        description=(
            "SQS API endpoint instead of AWS's regional one, as scheme://host[:port] with no "
            "path: an SQS-compatible server such as ElasticMQ (http://elasticmq.dev.svc:9324) "
            "or a VPC endpoint (https://...). Plain http:// is refused for amazonaws.com hosts."
        ),
    )
    account_id: str | None = Field(
        default=None,
        pattern=AWS_ACCOUNT_PATTERN,
        description=(
            "AWS account (12 digits) owning the queues; KEDA's aws-sqs-queue scaler needs full "
            "queue URLs, so autoscaling.mode keda requires it (000000000000 on ElasticMQ)."
        ),
    )
    fifo: bool = Field(
        default=False,
        description=(
            "FIFO queues (names end in .fifo): jobs of one message group (the envelope header "
            "message-group-id) run in order; enqueue delays are refused, retries are due at once."
        ),
    )
    priorities: bool = Field(
        default=True,
        description=(
            "One SQS queue per priority (Q-high, Q, Q-low, polled in that order); false: the "
            "single queue Q (one poll fewer per fetch)."
        ),
    )
    prefix: str = Field(
        default="",
        max_length=40,
        pattern=r"^[A-Za-z0-9_-]*$",
        description="Put before every SQS queue name, e.g. staging- (letters, digits, - and _).",
    )
    max_message_bytes: int | None = Field(
        default=None,
        ge=sqs_settings.MIN_MESSAGE_BYTES,
        le=sqs_settings.AWS_MAX_MESSAGE_BYTES,
        description=(
            "Largest message the SQS server takes, in bytes (body and message attributes "
            f"together), {sqs_settings.MIN_MESSAGE_BYTES} to "
            f"{sqs_settings.AWS_MAX_MESSAGE_BYTES}: the workers cut batches and failure "
            "histories to it and create missing queues with it. Unset: "
            f"{sqs_settings.AWS_MAX_MESSAGE_BYTES} (1 MiB) on AWS, "
            f"{sqs_settings.COMPATIBLE_MAX_MESSAGE_BYTES} (256 KiB) with an endpoint that is "
            "not AWS's (ElasticMQ, LocalStack): set it when such a server takes more."
        ),
    )
    role_arn: str | None = Field(
        default=None,
        max_length=2048,
        pattern=IAM_ROLE_ARN_PATTERN,
        description=(
            "IAM role of the worker pods with IRSA: set as the eks.amazonaws.com/role-arn "
            "annotation of their ServiceAccount <pool>-worker (the role's trust policy names "
            "system:serviceaccount:<namespace>:<pool>-worker). Unset with EKS Pod Identity: "
            "associate the role with that ServiceAccount instead."
        ),
    )
    keda: KedaSqsAuth = Field(
        default_factory=KedaSqsAuth,
        json_schema_extra=_object_default(KedaSqsAuth),
        description="The AWS identity KEDA reads the queues with (autoscaling.mode keda only).",
    )


def accept_without_the_stored_object(_: Any) -> bool:
    """The local check of a transition rule (CEL ``oldSelf``): it compares an update with the
    stored object, which only the API server has; a manifest read alone always passes."""
    return True


class KedaRabbitMQAuth(SpecModel):
    """Keys of the same Secret in the form KEDA's rabbitmq scaler reads (the management API).

    KEDA counts the pool's backlog over RabbitMQ's management HTTP API (one request summing the
    pool's three work queues, see ``manifests.build_scaled_object``), so it needs that API's
    URL, which the amqp:// URL in ``urlSecretRef`` does not spell out. The operator only
    references these keys; it never copies their values.
    """

    host_key: SecretKey = Field(
        description=(
            "Key whose value is the RabbitMQ management API URL with the vhost as its path: "
            "http://USER:PASSWORD@HOST:15672/VHOST (https:// and port 15671 with TLS; the "
            "default vhost is / or %2F)."
        ),
    )
    username_key: SecretKey | None = Field(
        default=None,
        description=(
            "Key whose value is the RabbitMQ user name (optional: when the host URL carries "
            "no credentials; set together with passwordKey)."
        ),
    )
    password_key: SecretKey | None = Field(
        default=None,
        description="Key whose value is the RabbitMQ password (optional, with usernameKey).",
    )


class RabbitMQSpec(SpecModel):
    """Where the queue's RabbitMQ is; the URL lives in a Secret, never in the WorkerPool.

    A workerfleet queue Q is the RabbitMQ queues wf.Q.high, wf.Q.normal, wf.Q.low (one quorum
    queue per priority level), wf.Q.dead and retry buckets wf.Q.delay.* (docs/brokers.md).
    """

    cel_rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="!has(self.keda) || has(self.keda.usernameKey) == has(self.keda.passwordKey)",
            message="keda.usernameKey and keda.passwordKey must be set together",
            check=lambda r: (
                r.keda is None or (r.keda.username_key is None) == (r.keda.password_key is None)
            ),
            field_path=".keda",
        ),
    )

    url_secret_ref: SecretKeyRef = Field(
        description=(
            "Secret key holding the AMQP URL: amqp://USER:PASSWORD@HOST:5672/VHOST (amqps:// "
            "and port 5671 with TLS; URL-encode a vhost with / as %2F). Query options: "
            "management_port (where the operator reads queue numbers over the management HTTP "
            "API; default 15672), prefetch, queue_type (quorum or classic). Passed to workers "
            "only as a secretKeyRef."
        )
    )
    keda: KedaRabbitMQAuth | None = Field(
        default=None,
        description="Secret keys KEDA reads; required when autoscaling.mode is keda.",
    )


BROKER_FIELDS: tuple[str, ...] = ("redis", "rabbitmq", "sqs")
"""The broker blocks of ``spec.queue``, exactly one per pool (a CEL rule is built from this
tuple: a new broker is one more name here and one more field on :class:`QueueSpec`)."""

SECRET_BROKERS: tuple[str, ...] = tuple(b for b in BROKER_FIELDS if b != "sqs")
"""Broker blocks whose URL (with its credentials) lives in a Secret; SQS's holds none."""

AGE_REPORTING_BROKERS: tuple[str, ...] = ("redis",)
"""Broker blocks whose queue statistics carry the oldest waiting job's age; on the others the
autoscaler's oldest-age reaction is unavailable (``Reason.OLDEST_JOB_AGE_UNAVAILABLE``)."""


def _cel_list(names: tuple[str, ...], template: str) -> str:
    return "[" + ", ".join(template.format(name) for name in names) + "]"


class QueueSpec(SpecModel):
    """The queue this pool consumes, and the one broker that holds it.

    The name is immutable (a CEL transition rule): renaming would leave the old queue's
    backlog, delayed retries and dead letters on the broker with no worker and no alert on
    them. A pool for another queue is a new WorkerPool. Exactly one broker block is set.
    """

    cel_rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="self.name == oldSelf.name",
            message=(
                "queue.name is immutable: renaming would orphan the old queue's backlog, "
                "delayed jobs and dead letters (create a new WorkerPool for another queue)"
            ),
            check=accept_without_the_stored_object,
            field_path=".name",
        ),
        Rule(
            cel=_cel_list(BROKER_FIELDS, "has(self.{})") + ".exists_one(b, b)",
            message="exactly one broker block must be set: " + " or ".join(BROKER_FIELDS),
            check=lambda q: sum(getattr(q, f) is not None for f in BROKER_FIELDS) == 1,
        ),
        Rule(
            cel=(
                "!has(self.sqs) || (self.name.matches('^[A-Za-z0-9_-]+$') && size(self.name) + "
                f"(has(self.sqs.prefix) ? size(self.sqs.prefix) : 0) <= {SQS_QUEUE_NAME_ROOM})"
            ),
            message=(
                "on SQS the queue name allows only letters, digits, - and _, and at most "
                f"{SQS_QUEUE_NAME_ROOM} characters with sqs.prefix (SQS queue names are "
                "80 characters with -high.fifo)"
            ),
            # the runtime's own check (worker_runtime.brokers.sqs.settings.build_queue_names)
            check=lambda q: _fits_sqs(q),
            field_path=".name",
        ),
        Rule(
            # SQS only: the endings are the names the SQS broker gives a queue's other queues
            cel=(
                "!has(self.sqs) || !"
                + _cel_string_list(list(sqs_settings.RESERVED_ENDINGS))
                + f".exists(e, ({_SQS_PREFIX_CEL} + self.name).endsWith(e))"
            ),
            message=(
                f"on SQS the queue name (with sqs.prefix) must not end in {_SQS_ENDINGS_TEXT}"
                ": a queue Q is the SQS queues Q-high, Q, Q-low and Q-dlq, so such a name "
                "would share another queue's SQS queues (emails-high is the high queue of "
                "emails, emails-dlq its dead letters): choose another name or sqs.prefix"
            ),
            check=lambda q: q.sqs is None or not _ends_like_another_queue(q.sqs, q.name),
            field_path=".name",
        ),
        Rule(
            cel=(
                "!has(self.subscription) || "
                "self.name == self.subscription.topic + ':' + self.subscription.group"
            ),
            message=(
                "queue.name must be <topic>:<group> of queue.subscription: a subscription is "
                "an ordinary queue of that name (e.g. shop.order.placed:email)"
            ),
            check=lambda q: (
                q.subscription is None or q.name == f"{q.subscription.topic}:{q.subscription.group}"
            ),
            field_path=".name",
        ),
        Rule(
            cel="!has(self.subscription) || has(self.redis)",
            message=(
                "queue.subscription needs queue.redis: topics (event subscriptions) are on "
                "Redis only today, not on the other brokers"
            ),
            check=lambda q: q.subscription is None or q.redis is not None,
            field_path=".subscription",
        ),
    )

    name: str = Field(
        min_length=1,
        max_length=128,
        pattern=QUEUE_NAME_PATTERN,
        description=(
            "Queue name (letters, digits, . _ : -), as given to worker_runtime.App. Immutable: "
            "a pool for another queue is a new WorkerPool. On SQS only letters, digits, - and "
            f"_, and with sqs.prefix no ending in {_SQS_ENDINGS_TEXT} (another queue's SQS "
            "queues)."
        ),
    )
    redis: RedisSpec | None = Field(
        default=None,
        description="The Redis server holding the queue (set exactly one broker block).",
    )
    rabbitmq: RabbitMQSpec | None = Field(
        default=None,
        description="The RabbitMQ server holding the queue (set exactly one broker block).",
    )
    sqs: SqsSpec | None = Field(
        default=None,
        description=(
            "Amazon SQS (or an SQS-compatible server) holding the queue; no Secret, credentials "
            "from the AWS chain (IRSA or EKS Pod Identity). Set exactly one broker block."
        ),
    )
    subscription: SubscriptionSpec | None = Field(
        default=None,
        description=(
            "The event subscription this queue is (events, docs/events.md): the operator "
            "registers it in the broker and scales the pool on its lag, the backlog of the "
            "queue <topic>:<group>, which queue.name must equal. Topics are on Redis only."
        ),
    )

    @property
    def broker(self) -> str:
        """The name of the broker block that is set (``redis``, ``rabbitmq``...)."""
        for name in BROKER_FIELDS:
            if getattr(self, name) is not None:
                return name
        raise ValueError("no broker block is set")

    @property
    def url_secret_ref(self) -> SecretKeyRef | None:
        """The Secret key holding the broker URL, whichever broker block is set; None on SQS,
        whose URL holds no credential and is composed from the spec."""
        if self.sqs is not None:
            return None
        ref: SecretKeyRef = getattr(self, self.broker).url_secret_ref
        return ref

    @property
    def keda_auth(self) -> KedaRedisAuth | KedaRabbitMQAuth | KedaSqsAuth | None:
        """The broker block's ``keda`` keys (None when unset; always set on SQS)."""
        auth: KedaRedisAuth | KedaRabbitMQAuth | KedaSqsAuth | None = getattr(
            self, self.broker
        ).keda
        return auth


# --- autoscaling -----------------------------------------------------------------------------


class ScaleUpSpec(SpecModel):
    """How fast the pool may grow."""

    stabilization_window_seconds: float = Field(
        default=0.0,
        ge=0.0,
        le=3600.0,
        description="Scale up only to the lowest replica count recommended within this window.",
    )
    max_step_percent: float = Field(
        default=100.0,
        gt=0.0,
        le=1000.0,
        description="Largest step per decision, in percent of the current replica count.",
    )
    max_step_pods: int | None = Field(
        default=4,
        ge=1,
        le=1000,
        description="Largest step per decision in pods; the larger of the two limits applies.",
    )


class ScaleDownSpec(SpecModel):
    """How fast the pool may shrink (every step, including the last one to zero)."""

    stabilization_window_seconds: float = Field(
        default=120.0,
        ge=0.0,
        le=3600.0,
        description=(
            "Scale down only to the highest replica count recommended within this window; "
            "scaling to zero also needs the queue idle for the whole window."
        ),
    )
    max_step_percent: float = Field(
        default=50.0,
        gt=0.0,
        le=100.0,
        description="Largest step per decision, in percent of the current replica count.",
    )
    max_step_pods: int | None = Field(
        default=None,
        ge=1,
        le=1000,
        description="Largest step per decision in pods; the larger of the two limits applies.",
    )


class AutoscalingSpec(SpecModel):
    """How the replica count follows the queue.

    Each signal (backlog, capacity, latency) turns queue statistics into a replica count; the
    desired count is the largest of the signals that are on (a target of 0 turns a signal off,
    at least one must stay on), then activation, minReplicas/maxReplicas, the stabilization
    windows and the step limits shape it (``autoscaling`` module docstring). ``0`` rather than
    ``null`` means "off" because the API server would prune a ``null`` and put the default
    back, and a JSON merge patch (client-side ``kubectl apply``) reads ``null`` as "delete".
    """

    cel_rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel=(
                "self.targetBacklogPerReplica > 0.0 || self.targetUtilization > 0.0 || "
                "self.targetOldestJobAgeSeconds > 0.0"
            ),
            message=(
                "at least one of targetBacklogPerReplica, targetUtilization and "
                "targetOldestJobAgeSeconds must be above 0 (0 turns a signal off)"
            ),
            check=lambda a: (
                a.target_backlog_per_replica > 0
                or a.target_utilization > 0
                or a.target_oldest_job_age_seconds > 0
            ),
            field_path=".targetBacklogPerReplica",
        ),
        Rule(
            cel="self.mode != 'keda' || self.targetBacklogPerReplica > 0.0",
            message=(
                "autoscaling.mode: keda scales on the backlog: targetBacklogPerReplica must be "
                "above 0"
            ),
            check=lambda a: a.mode != "keda" or a.target_backlog_per_replica > 0,
            field_path=".targetBacklogPerReplica",
        ),
        Rule(
            cel="self.minReplicas <= self.maxReplicas",
            message="minReplicas must not exceed maxReplicas",
            check=lambda a: a.min_replicas <= a.max_replicas,
            field_path=".minReplicas",
        ),
        Rule(
            cel=(
                "self.onMetricFailure != 'fallback' || (has(self.fallbackReplicas) && "
                "self.fallbackReplicas >= self.minReplicas && "
                "self.fallbackReplicas <= self.maxReplicas)"
            ),
            message=(
                "onMetricFailure: fallback requires fallbackReplicas between minReplicas "
                "and maxReplicas"
            ),
            check=lambda a: (
                a.on_metric_failure != "fallback"
                or (
                    a.fallback_replicas is not None
                    and a.min_replicas <= a.fallback_replicas <= a.max_replicas
                )
            ),
            field_path=".fallbackReplicas",
        ),
        Rule(
            cel="self.mode != 'keda' || !self.dryRun",
            message="dryRun is not supported in keda mode: KEDA applies its own decisions",
            check=lambda a: a.mode != "keda" or not a.dry_run,
            field_path=".dryRun",
        ),
        Rule(
            cel="self.mode != 'disabled' || has(self.replicas)",
            message="mode: disabled requires replicas",
            check=lambda a: a.mode != "disabled" or a.replicas is not None,
            field_path=".replicas",
        ),
        Rule(
            cel="self.mode == 'disabled' || !has(self.replicas)",
            message=(
                "replicas is only used when mode is disabled "
                "(use minReplicas and maxReplicas otherwise)"
            ),
            check=lambda a: a.mode == "disabled" or a.replicas is None,
            field_path=".replicas",
        ),
    )

    mode: Literal["builtin", "keda", "disabled"] = Field(
        default="builtin",
        description=(
            "builtin: the operator's own autoscaler sets the replicas; keda: the operator "
            "renders a KEDA ScaledObject and never writes replicas; disabled: fixed replicas."
        ),
    )
    min_replicas: int = Field(
        default=0, ge=0, le=1000, description="Fewest replicas (0 allows scale to zero)."
    )
    max_replicas: int = Field(default=10, ge=1, le=1000, description="Most replicas.")
    replicas: int | None = Field(
        default=None,
        ge=0,
        le=1000,
        description="Fixed replica count; only (and then required) with mode: disabled.",
    )
    target_backlog_per_replica: float = Field(
        default=100.0,
        ge=0.0,
        le=1_000_000.0,
        description=(
            "Backlog signal (KEDA-style, as KEDA's lagCount): replicas = backlog / this. "
            "0 turns the signal off. The desired count is the largest of the signals that "
            "are on, then clamped and shaped by scaleUp/scaleDown."
        ),
    )
    target_utilization: float = Field(
        default=0.8,
        ge=0.0,
        le=1.0,
        description=(
            "Capacity signal: replicas = (backlog + in-flight) / (concurrency x this). Counts "
            "running jobs, so busy pods are kept. 0 turns the signal off (with the defaults it "
            "dominates the backlog signal: set 0 for backlog-only scaling)."
        ),
    )
    target_oldest_job_age_seconds: float = Field(
        default=0.0,
        ge=0.0,
        le=86400.0,
        description=(
            "Latency signal: scale so that a waiting job starts within this many seconds, "
            "from arrival and service rates (Little's law). 0 (the default) turns it off."
        ),
    )
    activation_backlog: int = Field(
        default=1,
        ge=0,
        le=1_000_000,
        description="From zero replicas, wake up only when the backlog reaches this many jobs.",
    )
    polling_interval_seconds: float = Field(
        default=5.0, ge=1.0, le=300.0, description="How often the queue is read and scaled."
    )
    scale_up: ScaleUpSpec = Field(
        default_factory=ScaleUpSpec,
        json_schema_extra=_object_default(ScaleUpSpec),
        description="Scale-up behaviour.",
    )
    scale_down: ScaleDownSpec = Field(
        default_factory=ScaleDownSpec,
        json_schema_extra=_object_default(ScaleDownSpec),
        description="Scale-down behaviour.",
    )
    on_metric_failure: Literal["hold", "fallback"] = Field(
        default="hold",
        description=(
            "When the queue cannot be read: hold the current replicas, or go to fallbackReplicas."
        ),
    )
    fallback_replicas: int | None = Field(
        default=None,
        ge=0,
        le=1000,
        description="Replicas while the queue cannot be read (with onMetricFailure: fallback).",
    )
    failure_threshold: int = Field(
        default=3,
        ge=1,
        le=100,
        description=(
            "Consecutive failed queue reads before onMetricFailure: fallback applies (KEDA's "
            "failureThreshold); until then the replicas hold. The way to fallbackReplicas then "
            "goes through the scaleUp/scaleDown windows and steps like any other decision."
        ),
    )
    tolerance: float = Field(
        default=0.1,
        ge=0.0,
        lt=1.0,
        description=(
            "No scaling while the largest signal is within this fraction of the current "
            "replicas (the HPA's tolerance): 0.1 keeps 40 replicas for anything from 36 to 44."
        ),
    )
    dry_run: bool = Field(
        default=False,
        description=(
            "Record every decision in status and Events without changing replicas "
            "(builtin mode only)."
        ),
    )


# --- retries, dead letters, limits -------------------------------------------------------------


class BackoffSpec(SpecModel):
    """Delay before a failed job is retried (waits in Redis, never in a worker)."""

    cel_rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="self.baseSeconds <= self.maxSeconds",
            message="backoff baseSeconds must not exceed maxSeconds",
            check=lambda b: b.base_seconds <= b.max_seconds,
            field_path=".baseSeconds",
        ),
    )

    strategy: Literal["exponential", "fixed"] = Field(
        default="exponential",
        description="exponential: baseSeconds x 2^(attempt-1), capped; fixed: baseSeconds.",
    )
    base_seconds: float = Field(default=2.0, ge=0.0, le=86400.0, description="First retry delay.")
    max_seconds: float = Field(
        default=300.0, ge=0.0, le=86400.0, description="Upper bound of any retry delay."
    )
    jitter: Literal["full", "equal", "decorrelated", "none"] = Field(
        default="full", description="Randomisation of the delay, to spread retries out."
    )


class RetrySpec(SpecModel):
    """When a job goes to the dead-letter queue instead of running again."""

    max_attempts: int = Field(
        default=5,
        ge=1,
        le=1000,
        description="Handler failures (exceptions, timeouts) before the job is dead-lettered.",
    )
    max_deliveries: int = Field(
        default=5,
        ge=1,
        le=1000,
        description=(
            "Deliveries (worker crashes, lease expiries) before the job is dead-lettered as poison."
        ),
    )
    backoff: BackoffSpec = Field(
        default_factory=BackoffSpec,
        json_schema_extra=_object_default(BackoffSpec),
        description="Retry delays.",
    )


class DeadLetterSpec(SpecModel):
    """The dead-letter queue of the pool's queue."""

    max_length: int = Field(
        default=100_000, ge=1, le=100_000_000, description="Most dead letters kept (oldest go)."
    )
    retention_seconds: float = Field(
        default=604_800.0,
        ge=60.0,
        le=31_536_000.0,
        description="How long dead letters are kept.",
    )
    alert_threshold: int = Field(
        default=1,
        ge=1,
        le=100_000_000,
        description="WorkerPoolDeadLetterBacklog fires when the DLQ holds at least this many.",
    )


class RateLimitSpec(SpecModel):
    """A global rate limit shared by every worker of the pool."""

    jobs: int = Field(ge=1, le=1_000_000, description="Jobs started per window.")
    # At least 1 ms: the workers refuse a shorter window (WORKERFLEET_RATE_LIMIT_PER_SECONDS),
    # since the Redis engine counts it in whole milliseconds.
    per_seconds: float = Field(
        default=1.0,
        ge=0.001,
        le=86400.0,
        description="Window length of the rate limit (at least 0.001).",
    )


class DrainSpec(SpecModel):
    """Graceful shutdown of a worker pod."""

    timeout_seconds: float = Field(
        default=60.0,
        ge=0.0,
        le=3600.0,
        description=(
            "After SIGTERM, in-flight jobs may finish for this long; the rest go back to the "
            "queue. terminationGracePeriodSeconds is set above it."
        ),
    )


# --- pod shape: resources, env, scheduling ------------------------------------------------------


class ResourcesSpec(SpecModel):
    """CPU and memory of each worker container (defaults apply only when resources is unset)."""

    requests: dict[str, Quantity] = Field(
        default_factory=dict,
        max_length=8,
        description="Requested resources, e.g. {cpu: 250m, memory: 256Mi}.",
    )
    limits: dict[str, Quantity] = Field(
        default_factory=dict,
        max_length=8,
        description="Resource limits, e.g. {cpu: '1', memory: 512Mi}.",
    )


class SecretKeySelector(SpecModel):
    """A key of a Secret in the WorkerPool's namespace, for an env value."""

    name: ObjectName = Field(description="Secret name.")
    key: SecretKey = Field(description="Key in the Secret.")
    optional: bool | None = Field(
        default=None, description="Start the pod even if the Secret or key is missing."
    )


class EnvVarSource(SpecModel):
    """Where an env value comes from: only a Secret key is allowed."""

    secret_key_ref: SecretKeySelector = Field(description="The Secret key to read.")


class EnvVar(SpecModel):
    """One environment variable of the worker container."""

    cel_rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="has(self.value) != has(self.valueFrom)",
            message="exactly one of value or valueFrom.secretKeyRef must be set",
            check=lambda e: (e.value is None) != (e.value_from is None),
        ),
        Rule(
            cel="!(self.name in " + repr(list(OPERATOR_ENV_NAMES)).replace('"', "'") + ")",
            message="this name is set by the operator from the WorkerPool spec",
            check=lambda e: e.name not in OPERATOR_ENV_NAMES,
            field_path=".name",
        ),
    )

    name: str = Field(
        min_length=1, max_length=256, pattern=ENV_NAME_PATTERN, description="Variable name."
    )
    value: str | None = Field(default=None, max_length=32768, description="A plain value.")
    value_from: EnvVarSource | None = Field(default=None, description="A Secret key reference.")


class Toleration(SpecModel):
    """A node taint the worker pods tolerate."""

    key: str | None = Field(default=None, max_length=317, description="Taint key (empty: all).")
    operator: Literal["Exists", "Equal"] | None = Field(
        default=None, description="Exists or Equal (default Equal)."
    )
    value: str | None = Field(default=None, max_length=63, description="Taint value for Equal.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect to match (empty: all)."
    )
    toleration_seconds: int | None = Field(
        default=None, description="For NoExecute: how long the pod stays bound after the taint."
    )


class LabelSelectorRequirement(SpecModel):
    """One label expression."""

    key: str = Field(min_length=1, max_length=317, description="Label key.")
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"] = Field(
        description="In, NotIn, Exists or DoesNotExist."
    )
    values: list[str] | None = Field(
        default=None, max_length=64, description="Values for In and NotIn."
    )


class LabelSelector(SpecModel):
    """A Kubernetes label selector."""

    match_labels: dict[str, str] | None = Field(
        default=None, max_length=32, description="Labels that must all match."
    )
    match_expressions: list[LabelSelectorRequirement] | None = Field(
        default=None, max_length=16, description="Expressions that must all match."
    )


class NodeSelectorRequirement(SpecModel):
    """One node label (or field) expression."""

    key: str = Field(min_length=1, max_length=317, description="Node label or field key.")
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"] = Field(
        description="In, NotIn, Exists, DoesNotExist, Gt or Lt."
    )
    values: list[str] | None = Field(default=None, max_length=64, description="Values.")


class NodeSelectorTerm(SpecModel):
    """Node expressions that must all match."""

    match_expressions: list[NodeSelectorRequirement] | None = Field(
        default=None, max_length=16, description="Node label expressions."
    )
    match_fields: list[NodeSelectorRequirement] | None = Field(
        default=None, max_length=16, description="Node field expressions."
    )


class NodeSelector(SpecModel):
    """Node terms of which at least one must match."""

    node_selector_terms: list[NodeSelectorTerm] = Field(
        min_length=1, max_length=16, description="Terms, ORed."
    )


class PreferredSchedulingTerm(SpecModel):
    """A weighted node preference."""

    weight: int = Field(ge=1, le=100, description="Weight 1-100.")
    preference: NodeSelectorTerm = Field(description="The preferred nodes.")


class NodeAffinity(SpecModel):
    """Which nodes the worker pods need or prefer."""

    required_during_scheduling_ignored_during_execution: NodeSelector | None = Field(
        default=None, description="Hard node requirement."
    )
    preferred_during_scheduling_ignored_during_execution: list[PreferredSchedulingTerm] | None = (
        Field(default=None, max_length=16, description="Soft node preferences.")
    )


class PodAffinityTerm(SpecModel):
    """Pods (by label) that must or should share (or not share) a topology domain."""

    label_selector: LabelSelector | None = Field(default=None, description="The other pods.")
    namespaces: list[str] | None = Field(
        default=None, max_length=16, description="Their namespaces (default: the pool's)."
    )
    namespace_selector: LabelSelector | None = Field(
        default=None, description="Their namespaces, by label."
    )
    topology_key: str = Field(
        min_length=1, max_length=317, description="Node label defining the domain."
    )


class WeightedPodAffinityTerm(SpecModel):
    """A weighted pod (anti-)affinity preference."""

    weight: int = Field(ge=1, le=100, description="Weight 1-100.")
    pod_affinity_term: PodAffinityTerm = Field(description="The term.")


class PodAffinity(SpecModel):
    """Pod affinity or anti-affinity rules."""

    required_during_scheduling_ignored_during_execution: list[PodAffinityTerm] | None = Field(
        default=None, max_length=16, description="Hard rules."
    )
    preferred_during_scheduling_ignored_during_execution: list[WeightedPodAffinityTerm] | None = (
        Field(default=None, max_length=16, description="Soft rules.")
    )


class Affinity(SpecModel):
    """Node and pod affinity of the worker pods (the Kubernetes fields, typed)."""

    node_affinity: NodeAffinity | None = Field(default=None, description="Node affinity.")
    pod_affinity: PodAffinity | None = Field(default=None, description="Pod affinity.")
    pod_anti_affinity: PodAffinity | None = Field(default=None, description="Pod anti-affinity.")


class TopologySpread(SpecModel):
    """Spread the pool's pods over a topology domain (the selector is the pool's own pods)."""

    max_skew: int = Field(default=1, ge=1, le=1000, description="Largest allowed imbalance.")
    topology_key: str = Field(
        min_length=1, max_length=317, description="Node label, e.g. topology.kubernetes.io/zone."
    )
    when_unsatisfiable: Literal["DoNotSchedule", "ScheduleAnyway"] = Field(
        default="ScheduleAnyway", description="DoNotSchedule or ScheduleAnyway."
    )


class SchedulingSpec(SpecModel):
    """Where the worker pods may run."""

    node_selector: dict[str, str] | None = Field(
        default=None, max_length=32, description="Node labels the pods require."
    )
    tolerations: list[Toleration] | None = Field(
        default=None, max_length=32, description="Taints the pods tolerate."
    )
    affinity: Affinity | None = Field(default=None, description="Node and pod affinity.")
    topology_spread: list[TopologySpread] | None = Field(
        default=None, max_length=8, description="Topology spread constraints over the pool's pods."
    )
    priority_class_name: str | None = Field(
        default=None,
        max_length=253,
        pattern=DNS_SUBDOMAIN_PATTERN,
        description="PriorityClass of the pods.",
    )


class MetricsSpec(SpecModel):
    """The worker's /metrics, /healthz and /readyz endpoint."""

    cel_rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel=(
                # has(): a metrics object written without the key has no default for it
                "!has(self.podMonitorLabels) || self.podMonitorLabels.all(k, "
                "!k.startsWith('app.kubernetes.io/') && !k.startsWith('workerfleet.io/'))"
            ),
            message=(
                "podMonitorLabels cannot set app.kubernetes.io/* or workerfleet.io/* labels "
                "(the operator's own)"
            ),
            check=lambda m: (
                not any(
                    k.startswith(("app.kubernetes.io/", "workerfleet.io/"))
                    for k in m.pod_monitor_labels
                )
            ),
            field_path=".podMonitorLabels",
        ),
    )

    port: int = Field(
        default=9100,
        ge=1024,
        le=65535,
        description="Port of /metrics, /healthz and /readyz (probes use it too).",
    )
    pod_monitor: bool = Field(
        default=False, description="Create a Prometheus Operator PodMonitor for the pods."
    )
    pod_monitor_labels: dict[str, str] = Field(
        default_factory=dict,
        max_length=16,
        description=(
            "Extra labels on the PodMonitor, e.g. the `release` label a kube-prometheus-stack "
            "Prometheus selects PodMonitors by."
        ),
    )
    pod_target_labels: list[Annotated[str, Field(max_length=317)]] = Field(
        default_factory=list,
        max_length=16,
        description=(
            "Pod labels copied onto every worker series (PodMonitor podTargetLabels); the pool "
            "label is always added as `pool`."
        ),
    )
    service: bool = Field(
        default=False, description="Create a headless Service exposing the metrics port."
    )


class PodDisruptionBudgetSpec(SpecModel):
    """A PodDisruptionBudget for the pool's pods."""

    enabled: bool = Field(default=False, description="Create a PodDisruptionBudget.")
    max_unavailable: IntOrPercent = Field(
        default=1, description="Pods that voluntary disruptions may take down (count or %)."
    )


class LocalObjectReference(SpecModel):
    """A Secret of type kubernetes.io/dockerconfigjson in the WorkerPool's namespace."""

    name: ObjectName = Field(description="Secret name.")


# --- the spec ----------------------------------------------------------------------------------


class WorkerPoolSpec(SpecModel):
    """A pool of worker pods consuming one queue, scaled on its depth."""

    cel_rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="self.leaseSeconds <= self.jobTimeoutSeconds",
            message=(
                "leaseSeconds must not exceed jobTimeoutSeconds: a crashed worker's jobs "
                "would wait longer for redelivery than any job may run"
            ),
            check=lambda s: s.lease_seconds <= s.job_timeout_seconds,
            field_path=".leaseSeconds",
        ),
        Rule(
            cel=(
                # SQS needs no Secret keys: KEDA reads it with an AWS identity (sqs.keda)
                "!has(self.autoscaling) || self.autoscaling.mode != 'keda' || "
                "has(self.queue.sqs) || "
                + " || ".join(
                    f"(has(self.queue.{b}) && has(self.queue.{b}.keda))" for b in SECRET_BROKERS
                )
            ),
            message=(
                "autoscaling.mode: keda requires the broker block's keda keys ("
                + " or ".join(f"queue.{b}.keda" for b in SECRET_BROKERS)
                + ": the Secret keys KEDA reads)"
            ),
            check=lambda s: s.autoscaling.mode != "keda" or s.queue.keda_auth is not None,
            field_path=".queue",
        ),
        Rule(
            cel=(
                "!has(self.autoscaling) || self.autoscaling.mode != 'keda' || "
                "!has(self.queue.sqs) || has(self.queue.sqs.accountId)"
            ),
            message=(
                "autoscaling.mode: keda on SQS requires queue.sqs.accountId (KEDA's "
                "aws-sqs-queue scaler reads queues by their full URL)"
            ),
            check=lambda s: (
                s.autoscaling.mode != "keda"
                or s.queue.sqs is None
                or s.queue.sqs.account_id is not None
            ),
            field_path=".queue.sqs",
        ),
        Rule(
            cel=(
                "!has(self.autoscaling) || self.autoscaling.mode != 'builtin' || "
                + " || ".join(f"has(self.queue.{b})" for b in AGE_REPORTING_BROKERS)
                + " || self.autoscaling.targetBacklogPerReplica > 0.0"
                " || self.autoscaling.targetUtilization > 0.0"
            ),
            message=(
                "targetOldestJobAgeSeconds cannot be the only signal on a broker that does not "
                "report the oldest job's age (only "
                + ", ".join(AGE_REPORTING_BROKERS)
                + " does): turn on targetBacklogPerReplica or targetUtilization too, or the "
                "pool would never wake from zero replicas"
            ),
            check=lambda s: (
                s.autoscaling.mode != "builtin"
                or s.queue.broker in AGE_REPORTING_BROKERS
                or s.autoscaling.target_backlog_per_replica > 0
                or s.autoscaling.target_utilization > 0
            ),
            field_path=".autoscaling",
        ),
    )

    image: str = Field(
        min_length=1,
        max_length=512,
        description="Worker image (contains the application and worker_runtime); pin a digest.",
    )
    app: str = Field(
        min_length=3,
        max_length=256,
        pattern=APP_PATTERN,
        description="module:attribute of the worker_runtime.App in the image.",
    )
    queue: QueueSpec = Field(description="The queue this pool consumes.")
    concurrency: int = Field(default=8, ge=1, le=1000, description="Jobs in flight per pod.")
    autoscaling: AutoscalingSpec = Field(
        default_factory=AutoscalingSpec,
        json_schema_extra=_object_default(AutoscalingSpec),
        description=(
            "How the replica count follows the queue: the largest of the signals that are on "
            "(targetBacklogPerReplica, targetUtilization, targetOldestJobAgeSeconds; 0 turns "
            "one off), clamped to minReplicas/maxReplicas and shaped by scaleUp/scaleDown."
        ),
    )
    retry: RetrySpec = Field(
        default_factory=RetrySpec,
        json_schema_extra=_object_default(RetrySpec),
        description="Retries and dead-lettering.",
    )
    dead_letter: DeadLetterSpec = Field(
        default_factory=DeadLetterSpec,
        json_schema_extra=_object_default(DeadLetterSpec),
        description="The dead-letter queue.",
    )
    lease_seconds: float = Field(
        default=30.0,
        ge=3.0,
        le=3600.0,
        description=(
            "A job held by a worker that dies is delivered again within this time; held "
            "leases are renewed every leaseSeconds/3."
        ),
    )
    job_timeout_seconds: float = Field(
        default=300.0,
        ge=1.0,
        le=86400.0,
        description="Default per-job timeout (a task may set its own).",
    )
    rate_limit: RateLimitSpec | None = Field(
        default=None, description="Global rate limit across the pool (optional)."
    )
    drain: DrainSpec = Field(
        default_factory=DrainSpec,
        json_schema_extra=_object_default(DrainSpec),
        description="Graceful shutdown budget.",
    )
    resources: ResourcesSpec | None = Field(
        default=None,
        description=(
            "Container resources; when unset: requests cpu 100m, memory 128Mi; limits cpu 1, "
            "memory 512Mi."
        ),
    )
    env: list[EnvVar] | None = Field(
        default=None,
        max_length=64,
        description="Extra environment: plain values or secretKeyRef only.",
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["name"],
        },
    )
    scheduling: SchedulingSpec | None = Field(default=None, description="Pod placement.")
    metrics: MetricsSpec = Field(
        default_factory=MetricsSpec,
        json_schema_extra=_object_default(MetricsSpec),
        description="Metrics and health endpoint.",
    )
    pod_disruption_budget: PodDisruptionBudgetSpec = Field(
        default_factory=PodDisruptionBudgetSpec,
        json_schema_extra=_object_default(PodDisruptionBudgetSpec),
        description="Optional PodDisruptionBudget.",
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = Field(
        default=None, description="Image pull policy (Kubernetes default when unset)."
    )
    image_pull_secrets: list[LocalObjectReference] | None = Field(
        default=None, max_length=16, description="Registry credentials for the image."
    )

    @model_validator(mode="after")
    def _env_names_are_unique(self) -> Self:
        # The API server enforces this through x-kubernetes-list-type: map.
        names = [e.name for e in self.env or ()]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise PydanticCustomError(
                "workerpool_rule", "duplicate env name: " + ", ".join(duplicates)
            )
        return self


def iter_rule_models() -> tuple[type[SpecModel], ...]:
    """Every spec model that declares cross-field rules (the tests walk them)."""
    return (
        WorkerPoolSpec,
        QueueSpec,
        RabbitMQSpec,
        SqsSpec,
        AutoscalingSpec,
        BackoffSpec,
        EnvVar,
    )
