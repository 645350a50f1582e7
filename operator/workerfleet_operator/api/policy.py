"""Translate ``spec.autoscaling`` into the autoscaler's internal :class:`ScalingPolicy`.

Who calls it: the operator's control loop and the local fleet, once per spec change, before
calling ``autoscaling.decide``. Kept next to the API because it is the one place that maps CRD
field names onto the autoscaler's units.
"""

from __future__ import annotations

from workerfleet_operator import autoscaling
from workerfleet_operator.api.spec import WorkerPoolSpec


def build_scaling_policy(spec: WorkerPoolSpec) -> autoscaling.ScalingPolicy:
    """The autoscaler's policy for a pool (the CRD's defaults are already in ``spec``)."""
    a = spec.autoscaling
    return autoscaling.ScalingPolicy(
        min_replicas=a.min_replicas,
        max_replicas=a.max_replicas,
        concurrency=spec.concurrency,
        target_backlog_per_replica=_signal_target(a.target_backlog_per_replica),
        target_utilization=_signal_target(a.target_utilization),
        target_oldest_job_age_seconds=_signal_target(a.target_oldest_job_age_seconds),
        activation_backlog=a.activation_backlog,
        polling_interval_seconds=a.polling_interval_seconds,
        scale_up=autoscaling.StepPolicy(
            stabilization_window_seconds=a.scale_up.stabilization_window_seconds,
            max_step_percent=a.scale_up.max_step_percent,
            max_step_pods=a.scale_up.max_step_pods,
        ),
        scale_down=autoscaling.StepPolicy(
            stabilization_window_seconds=a.scale_down.stabilization_window_seconds,
            max_step_percent=a.scale_down.max_step_percent,
            max_step_pods=a.scale_down.max_step_pods,
        ),
        on_metric_failure=a.on_metric_failure,
        fallback_replicas=a.fallback_replicas,
        failure_threshold=a.failure_threshold,
        tolerance=a.tolerance,
        mode=a.mode,
        dry_run=a.dry_run,
        replicas=a.replicas,
    )


def _signal_target(value: float) -> float | None:
    # The CRD spells "signal off" as 0 (a null would be pruned and defaulted back by the API
    # server); the autoscaler spells it None.
    return value if value > 0 else None
