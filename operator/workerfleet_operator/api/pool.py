"""A WorkerPool object as the pure core sees it: identity plus a parsed spec, or why it is bad.

Who calls it: the operator's shell turns each WorkerPool body it receives into a :class:`Pool`
(or :class:`InvalidPool`) with :func:`parse_pool` and hands it to ``plan.plan``; the builders in
``manifests`` take a :class:`Pool`. The CRD's schema and CEL rules should already have refused
bad input; this parse is the second line (an outdated CRD, an emulator without validation) and
the place where the same messages are produced for the pool's status.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from workerfleet_operator.api import crd
from workerfleet_operator.api.spec import WorkerPoolSpec


@dataclass(frozen=True)
class Pool:
    """A valid WorkerPool: what the builders need to know about it."""

    name: str
    namespace: str
    uid: str
    generation: int
    spec: WorkerPoolSpec
    labels: Mapping[str, str] | None = None


@dataclass(frozen=True)
class InvalidPool:
    """A WorkerPool whose spec cannot be used, with a message naming each bad field."""

    name: str
    namespace: str
    uid: str
    generation: int
    message: str


def build_validation_message(error: ValidationError, prefix: str = "spec") -> str:
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
    raw_spec = body.get("spec")
    if not isinstance(raw_spec, Mapping):
        problems.append("spec: required")
        return InvalidPool(name, namespace, uid, generation, "; ".join(problems))
    try:
        spec = WorkerPoolSpec.model_validate(dict(raw_spec))
    except ValidationError as error:
        problems.append(build_validation_message(error))
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
    )
