"""A WorkerPool object as the pure core sees it: identity plus a parsed spec, or why it is bad.

Who calls it: the operator's shell turns each WorkerPool body it receives into a :class:`Pool`
(or :class:`InvalidPool`) with :func:`parse_pool` and hands it to ``plan.plan``; the builders in
``manifests`` take a :class:`Pool`. The CRD's schema and CEL rules should already have refused
bad input; this parse is the second line (an outdated CRD, an emulator without validation) and
the place where the same messages are produced for the pool's status.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from workerfleet_operator.api import crd
from workerfleet_operator.api.spec import WorkerPoolSpec

PAUSED_ANNOTATION = f"{crd.GROUP}/paused"
"""``"true"`` pauses the pool at its current replicas (KEDA's ``autoscaling.keda.sh/paused``)."""
PAUSED_REPLICAS_ANNOTATION = f"{crd.GROUP}/paused-replicas"
"""``"N"`` pauses the pool at N replicas (KEDA's ``autoscaling.keda.sh/paused-replicas``)."""
_REPLICAS = re.compile(r"^[0-9]{1,9}$")


@dataclass(frozen=True)
class Pause:
    """A paused pool: nothing scales it. ``replicas`` None: held where they are; else set to it."""

    replicas: int | None = None


def parse_pause(annotations: Mapping[str, Any] | None) -> Pause | None:
    """The pool's pause from its annotations, None when it is not paused.

    Either annotation pauses (as in KEDA): ``paused-replicas`` alone pauses at that count.
    Raises ValueError naming the annotation when ``paused-replicas`` is not a replica count.
    """
    annotations = annotations or {}
    count = annotations.get(PAUSED_REPLICAS_ANNOTATION)
    if count is not None:
        if not _REPLICAS.match(str(count).strip()):
            raise ValueError(
                f"metadata.annotations[{PAUSED_REPLICAS_ANNOTATION}]: must be a replica count "
                f"(0 or more), not {str(count)[:20]!r}"
            )
        return Pause(replicas=int(str(count).strip()))
    if str(annotations.get(PAUSED_ANNOTATION, "")).strip().lower() == "true":
        return Pause()
    return None


@dataclass(frozen=True)
class Pool:
    """A valid WorkerPool: what the builders need to know about it."""

    name: str
    namespace: str
    uid: str
    generation: int
    spec: WorkerPoolSpec
    labels: Mapping[str, str] | None = None
    pause: Pause | None = None


@dataclass(frozen=True)
class InvalidPool:
    """A WorkerPool whose spec cannot be used, with a message naming each bad field."""

    name: str
    namespace: str
    uid: str
    generation: int
    message: str


def describe_validation_error(error: ValidationError, prefix: str = "spec") -> str:
    """``spec.autoscaling: minReplicas must not exceed maxReplicas; spec.image: ...``.

    Pydantic's own rendering echoes the input values; this one only names fields and reasons,
    so nothing from the object is copied into status or Events.
    """
    parts = []
    for item in error.errors(include_url=False, include_input=False):
        location = ".".join([prefix, *(str(p) for p in item["loc"])])
        parts.append(f"{location}: {item['msg']}")
    return "; ".join(parts)


def parse_pool(body: Mapping[str, Any]) -> Pool | InvalidPool:
    """Parse a WorkerPool object (as returned by the API server)."""
    metadata = body.get("metadata") or {}
    name = str(metadata.get("name", ""))
    namespace = str(metadata.get("namespace", ""))
    uid = str(metadata.get("uid", ""))
    generation = int(metadata.get("generation") or 0)
    problems = [rule.message for rule in crd.ROOT_RULES if not rule.check(body)]
    annotations = metadata.get("annotations")
    try:
        pause = parse_pause(annotations if isinstance(annotations, Mapping) else None)
    except ValueError as error:
        problems.append(str(error))
        pause = None
    raw_spec = body.get("spec")
    if not isinstance(raw_spec, Mapping):
        problems.append("spec: required")
        return InvalidPool(name, namespace, uid, generation, "; ".join(problems))
    try:
        spec = WorkerPoolSpec.model_validate(dict(raw_spec))
    except ValidationError as error:
        problems.append(describe_validation_error(error))
        spec = None
    if problems or spec is None:
        return InvalidPool(name, namespace, uid, generation, "; ".join(problems))
    labels = metadata.get("labels")
    return Pool(
        name=name,
        namespace=namespace,
        uid=uid,
        generation=generation,
        spec=spec,
        labels=dict(labels) if isinstance(labels, Mapping) else None,
        pause=pause,
    )
