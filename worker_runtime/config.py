"""Worker configuration from the environment: the operator → worker-pod contract.

The operator (and the local fleet) set ``WORKERFLEET_*`` variables on worker pods; the worker
process, the CLI and the operator's read-only Redis access build a validated
:class:`WorkerSettings` from them. The variable names and defaults are fixed in
``docs/architecture.md`` ("the environment contract"); change them there first.
"""

from __future__ import annotations

import socket
from typing import Literal

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

BackoffStrategy = Literal["exponential", "fixed"]
Jitter = Literal["full", "equal", "decorrelated", "none"]
LogFormat = Literal["json", "text"]
LogLevel = Literal["debug", "info", "warning", "error", "critical"]
EventLoop = Literal["asyncio", "uvloop"]

RENEWAL_TIMEOUT_FLOOR_SECONDS = 0.5
"""The shortest reply timeout of the control thread's lease renewal (its connection's socket
timeout is the renewal interval, ``lease/3``, kept within 0.5-5 s): a reply taking longer than
this on a busy machine or network is not a dead broker."""

MIN_LEASE_SECONDS = 3.0 * RENEWAL_TIMEOUT_FLOOR_SECONDS
"""The shortest lease a worker accepts (1.5 s). Leases are renewed every third of the lease, and
a renewal that times out must end within one interval, so that its retry still lands in the
lease's last third: below 1.5 s the interval is shorter than the renewal's own reply timeout.
At 1 s one slow renewal (0.33 s interval + 0.5 s timeout + 0.25 s retry wait) lost every
held lease, and at 0.001 s no renewal could ever arrive in time: every job would be handed to
another worker while it ran. (The operator asks for at least 3 s on its pools.)"""

KEEP_FINISHED_MAX_SECONDS = 2_592_000.0
"""The longest WORKERFLEET_KEEP_FINISHED_SECONDS (30 days; the broker seam's
``base.KEEP_FINISHED_MAX_SECONDS`` is this value): a finished record costs broker memory per job."""

MIN_RATE_LIMIT_PER_SECONDS = 0.001
"""The shortest rate-limit window: the Redis engine counts it in whole milliseconds, and a
shorter one was sent as 0 ms, a window its token bucket cannot divide by."""


def _default_pod_name() -> str:
    # Outside Kubernetes the hostname is the most useful stand-in for a pod name.
    return socket.gethostname()


class WorkerSettings(BaseSettings):
    """Every ``WORKERFLEET_*`` setting a worker process reads, validated once at start-up."""

    model_config = SettingsConfigDict(
        env_prefix="WORKERFLEET_",
        case_sensitive=False,
        extra="ignore",
        frozen=True,
        populate_by_name=True,
        # "nan" failed only the upper bound it happened to have ("less than or equal to 86400"),
        # or none: WORKERFLEET_RETRY_BACKOFF_MAX_SECONDS=inf let a Retry-After of 1e300 s park
        # a job for good. Every time and rate here is a finite number.
        allow_inf_nan=False,
    )

    redis_url: str = Field(
        # WORKERFLEET_BROKER_URL first (the operator sets it on pools of every broker but
        # Redis), then the older WORKERFLEET_REDIS_URL (Redis pools), as the CLI reads them.
        validation_alias=AliasChoices("WORKERFLEET_BROKER_URL", "WORKERFLEET_REDIS_URL"),
        description=(
            "the broker URL, any scheme open_broker serves (redis://, rediss://, unix://, "
            "redis+sentinel://, redis+cluster://, amqp://, amqps://, sqs://)"
        ),
    )
    queue: str | None = Field(default=None, description="queue name; defaults to the App's")
    app: str | None = Field(default=None, description="module:attr of the App")
    concurrency: int = Field(default=8, ge=1, le=10_000)
    lease_seconds: float = Field(
        default=30.0,
        le=86_400.0,
        description=f"at least {MIN_LEASE_SECONDS:g} s; renewed every third of it",
    )
    job_timeout_seconds: float = Field(default=300.0, gt=0.0)
    drain_timeout_seconds: float = Field(default=60.0, ge=0.0)
    retry_max_attempts: int = Field(default=5, ge=1)
    retry_max_deliveries: int = Field(default=5, ge=1)
    retry_backoff_strategy: BackoffStrategy = "exponential"
    retry_backoff_base_seconds: float = Field(default=2.0, ge=0.0)
    retry_backoff_max_seconds: float = Field(default=300.0, ge=0.0)
    retry_backoff_jitter: Jitter = "full"
    dlq_max_length: int = Field(default=100_000, ge=1)
    dlq_retention_seconds: float = Field(default=604_800.0, gt=0.0)
    keep_finished_seconds: float = Field(
        default=0.0,
        description=(
            "keep a record of each finished job by id this long (workerfleet job show reads "
            f"it done); 0 = off, at most {KEEP_FINISHED_MAX_SECONDS:.0f} s (30 days)"
        ),
    )
    process_pool_size: int | None = Field(
        default=None, ge=1, le=1024, description="children for process tasks; default cores"
    )
    process_max_jobs_per_child: int = Field(default=1000, ge=0, description="0 = never recycle")
    process_max_memory_growth_mb: float = Field(default=0.0, ge=0.0, description="0 = off")
    rate_limit_jobs: int | None = Field(default=None, ge=1)
    rate_limit_per_seconds: float | None = Field(default=None, gt=0.0)
    metrics_port: int = Field(default=9100, ge=0, le=65_535)
    metrics_host: str = Field(default="0.0.0.0", description="bind address of /metrics")
    pod_name: str = Field(default_factory=_default_pod_name)
    pod_namespace: str = ""
    log_level: LogLevel = "info"
    log_format: LogFormat = "json"
    burst: bool = Field(
        default=False,
        description=(
            "run the jobs ready now, then exit 0 once the queue has none ready and the worker "
            "holds none (tests, one-off batch runs); jobs delayed into the future are left"
        ),
    )
    event_loop: EventLoop = Field(
        default="asyncio",
        description=(
            "the job loop's event loop: asyncio, or uvloop (the uvloop extra; less CPU per job)"
        ),
    )

    @field_validator("log_level", "log_format", "event_loop", mode="before")
    @classmethod
    def _any_case(cls, value: object) -> object:
        # INFO, Info and info are one level (operators copy levels from other tools' docs)
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("lease_seconds")
    @classmethod
    def _lease_renewable(cls, value: float) -> float:
        # Refused by name, value and bound: a lease too short to renew hands every job to
        # another worker while it runs, which looks like a flood of duplicates, not a typo.
        if not value >= MIN_LEASE_SECONDS:
            msg = (
                f"WORKERFLEET_LEASE_SECONDS={value:g} is below the minimum of "
                f"{MIN_LEASE_SECONDS:g} s: leases are renewed every third of the lease, and a "
                f"renewal may take up to {RENEWAL_TIMEOUT_FLOOR_SECONDS:g} s to answer"
            )
            raise ValueError(msg)
        return value

    @field_validator("keep_finished_seconds")
    @classmethod
    def _keep_finished_bounded(cls, value: float) -> float:
        if not 0.0 <= value <= KEEP_FINISHED_MAX_SECONDS:
            msg = (
                f"WORKERFLEET_KEEP_FINISHED_SECONDS={value:.15g} must be between 0 (off: a "
                f"finished job leaves no record) and {KEEP_FINISHED_MAX_SECONDS:.0f} s (30 days)"
            )
            raise ValueError(msg)
        return value

    @field_validator("rate_limit_per_seconds")
    @classmethod
    def _rate_window_countable(cls, value: float | None) -> float | None:
        if value is not None and not value >= MIN_RATE_LIMIT_PER_SECONDS:
            msg = (
                f"WORKERFLEET_RATE_LIMIT_PER_SECONDS={value:g} is below the minimum of "
                f"{MIN_RATE_LIMIT_PER_SECONDS:g} s (the window is counted in milliseconds)"
            )
            raise ValueError(msg)
        return value

    @model_validator(mode="after")
    def _rate_limit_is_complete(self) -> WorkerSettings:
        # A half-configured rate limit is a typo, not "no limit": refuse it loudly.
        if (self.rate_limit_jobs is None) != (self.rate_limit_per_seconds is None):
            msg = "WORKERFLEET_RATE_LIMIT_JOBS and _PER_SECONDS must be set together"
            raise ValueError(msg)
        if self.retry_backoff_max_seconds < self.retry_backoff_base_seconds:
            msg = "WORKERFLEET_RETRY_BACKOFF_MAX_SECONDS must be >= _BASE_SECONDS"
            raise ValueError(msg)
        return self

    @property
    def heartbeat_interval_seconds(self) -> float:
        """How often held leases are renewed: a third of the lease, so two renewals may fail."""
        return self.lease_seconds / 3.0

    @property
    def health_stale_after_seconds(self) -> float:
        """/healthz turns red when the last good Redis round trip is older than this."""
        return 3.0 * self.heartbeat_interval_seconds
