"""The operator process's configuration, from ``WORKERFLEET_OPERATOR_*`` environment variables.

Read once by ``shell.main`` (and built directly by the tests); passed to ``shell.context``.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ENV_PREFIX = "WORKERFLEET_OPERATOR_"


class OperatorConfig(BaseSettings):
    """Every setting of the operator process, validated at start-up."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        case_sensitive=False,
        extra="ignore",
        frozen=True,
        # "nan" passes every bound it is compared with (gt=0 among them): refused by name
        allow_inf_nan=False,
    )

    namespaces: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(), description="namespaces to watch (comma-separated); empty = cluster-wide"
    )
    health_port: int = Field(
        default=8080, ge=0, le=65_535, description="kopf liveness /healthz; 0 = off"
    )
    metrics_port: int = Field(
        default=9090, ge=0, le=65_535, description="Prometheus /metrics; 0 = off"
    )
    bind_host: str = Field(
        default="0.0.0.0", description="address of the health and metrics servers"
    )
    kubeconfig: str | None = Field(default=None, description="kubeconfig path; default in-cluster")
    peering: str | None = Field(
        default=None, description="kopf peering name; unset = standalone (single replica)"
    )
    resync_seconds: float = Field(
        default=300.0,
        gt=0,
        description=(
            "re-reconcile every pool this often: read its children, write only one deleted or "
            "edited (each pool's delay jittered by ±10 %)"
        ),
    )
    status_refresh_seconds: float = Field(
        default=30.0,
        ge=0,
        description=(
            "write status numbers that move on every poll (backlog, oldest-job age, rates, "
            "signals) at most this often; conditions and replica changes are written at once"
        ),
    )
    api_qps: float = Field(
        default=20.0, gt=0, description="the operator's own API requests per second (sustained)"
    )
    api_burst: int = Field(
        default=40, ge=1, description="API requests allowed at once before api_qps applies"
    )
    api_max_in_flight: int = Field(
        default=32,
        ge=1,
        description=(
            "API requests of the operator's own client on their way at once; the others wait "
            "their turn before their timeout starts"
        ),
    )
    max_concurrent_reconciles: int = Field(
        default=32,
        ge=1,
        description=(
            "pools reconciled at once; the others wait their turn holding nothing unpacked "
            "(bounds the memory of a burst: an operator start, thousands of new pools)"
        ),
    )
    secret_cache_seconds: float = Field(
        default=30.0, ge=0, description="re-read a Secret after this"
    )
    redis_timeout_seconds: float = Field(default=2.0, gt=0, description="timeout of one stats read")
    retry_base_seconds: float = Field(
        default=1.0, gt=0, description="first retry of a failed reconcile"
    )
    retry_max_seconds: float = Field(default=60.0, gt=0, description="longest retry delay")
    watch_server_timeout_seconds: float = Field(default=300.0, gt=0)
    watch_client_timeout_seconds: float = Field(
        default=330.0, gt=0, description="a silent watch is broken and relisted after this"
    )
    api_retry_attempts: int = Field(
        default=5,
        ge=1,
        description="tries of one API request answered 429/5xx or timing out, before it fails",
    )
    api_retry_max_seconds: float = Field(
        default=8.0, gt=0, description="longest wait inside a request (the pool waits longer ones)"
    )
    api_retry_after_max_seconds: float = Field(
        default=60.0, gt=0, description="longest Retry-After of the API server honoured"
    )
    leader_election: bool = Field(
        default=False,
        description="elect one leader through a Lease; only the leader reconciles and writes",
    )
    lease_name: str = Field(default="workerfleet-operator", description="the Lease's name")
    lease_namespace: str = Field(
        default="",
        description="the Lease's namespace; empty = the pod's (service account) or default",
    )
    leader_identity: str = Field(
        default="", description="this replica's name in the Lease; empty = hostname and pid"
    )
    lease_duration_seconds: float = Field(
        default=15.0, gt=0, description="a standby takes the Lease this long after its last renewal"
    )
    renew_deadline_seconds: float = Field(
        default=10.0,
        gt=0,
        description="the leader stops writing when it has not renewed for this long",
    )
    retry_period_seconds: float = Field(
        default=2.0, gt=0, description="renew (leader) or try to acquire (standby) this often"
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "text"] = "json"

    @model_validator(mode="after")
    def _check_lease_timing(self) -> OperatorConfig:
        # client-go's rule: the leader must give up before a standby may take over.
        if (
            not self.retry_period_seconds
            < self.renew_deadline_seconds
            < self.lease_duration_seconds
        ):
            raise ValueError(
                f"leader election needs {ENV_PREFIX}RETRY_PERIOD_SECONDS < "
                f"{ENV_PREFIX}RENEW_DEADLINE_SECONDS < {ENV_PREFIX}LEASE_DURATION_SECONDS "
                f"(they are {self.retry_period_seconds:g}, {self.renew_deadline_seconds:g} and "
                f"{self.lease_duration_seconds:g})"
            )
        return self

    @field_validator("namespaces", mode="before")
    @classmethod
    def _split_namespaces(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value


def describe_invalid_settings(exc: ValidationError) -> str:
    """One line for people: each problem of ``exc`` after the environment variable it is
    about (``WORKERFLEET_OPERATOR_LOG_LEVEL: Input should be ...``)."""
    problems = []
    for error in exc.errors():
        message = str(error["msg"]).removeprefix("Value error, ")
        loc = "_".join(str(part) for part in error["loc"]).upper()
        problems.append(f"{ENV_PREFIX}{loc}: {message}" if loc else message)
    return "; ".join(problems)
