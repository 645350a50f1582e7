"""Comparisons of Kubernetes objects as dicts: is what we applied still there (drift), what will
a merge patch store, which of two bodies is newer, when did a pod template last change.

Pure functions used by the pool controller's reconcile and scaler (``shell.reconcile``,
``shell.scaler``, ``shell.report``); no I/O. Quantities the API server re-spells are compared by
amount (``workerfleet_operator.quantity``), and empty values it leaves out count as present.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Mapping
from typing import Any

from workerfleet_operator import api, quantity

Body = dict[str, Any]


def merge(target: Any, patch: Any) -> Any:
    """RFC 7386 merge of ``patch`` into ``target`` (what the API server will store)."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge(result.get(key), value)
    return result


def is_newer(candidate: Mapping[str, Any] | None, current: Mapping[str, Any] | None) -> bool:
    if candidate is None:
        return False
    if current is None:
        return True
    return is_newer_version(read_resource_version(candidate), read_resource_version(current))


def read_resource_version(body: Mapping[str, Any]) -> str:
    """An object's metadata.resourceVersion ('' when absent)."""
    return str((body.get("metadata") or {}).get("resourceVersion", ""))


def is_newer_version(candidate: str, current: str) -> bool:
    """Whether an object at resourceVersion ``candidate`` is at least as new as one at
    ``current`` (the API server's versions are integers; anything else counts as newer)."""
    if candidate.isdigit() and current.isdigit():
        return int(candidate) >= int(current)
    return True


class PackedJSON:
    """A value the pool controller keeps between rounds: compact, key-sorted JSON, compressed.

    Three such values per pool (``shell.pool``): the WorkerPool and its Deployment as last seen
    (each round unpacks what it reads, once), and the drift reference
    (:func:`build_drift_reference`), compared whole or walked by :func:`is_subset`. As dicts
    these were ~35 KB of small objects per pool, long-lived ones among each round's garbage;
    packed, a few KB in three byte strings (Kubernetes objects repeat their keys and labels:
    zlib's fastest level takes a worker Deployment's 5.2 KB of JSON to 1.9 KB).

    Packing costs a ``json.dumps`` and a compression, unpacking a decompression and a
    ``json.loads``: tens of µs each, once per event or per round. Equal to another packed value
    with the same bytes (sorted keys and one compression level: equal values pack equally), or
    to the dict or list it encodes.
    """

    __slots__ = ("packed",)

    def __init__(self, value: Any) -> None:
        text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
        self.packed = zlib.compress(text.encode(), 1)

    def unpack(self) -> Any:
        return json.loads(zlib.decompress(self.packed))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, PackedJSON):
            return self.packed == other.packed
        if isinstance(other, dict | list):
            return bool(self.unpack() == other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # equal to dicts, which are unhashable

    def __repr__(self) -> str:
        return f"PackedJSON({len(self.packed)} bytes)"


def track_rollout_generation(
    known: int | None, before: Mapping[str, Any] | None, after: Mapping[str, Any]
) -> int | None:
    """The Deployment generation at which its pod template last changed, as far as we know.

    Our write changed the template: its generation. Otherwise, a controller that has caught up
    (observedGeneration == generation) has seen every template: its generation bounds it.
    """
    generation = int((after.get("metadata") or {}).get("generation") or 0)
    template = (after.get("spec") or {}).get("template")
    if before is None or (before.get("spec") or {}).get("template") != template:
        return generation
    if known is None and int((after.get("status") or {}).get("observedGeneration") or 0) == (
        generation
    ):
        return generation
    return known


def build_drift_reference(deployment: Body, pool: api.Pool) -> Body:
    """Our applied Deployment minus spec.replicas when the autoscaler (or KEDA) owns it."""
    if pool.spec.autoscaling.mode == "disabled":
        return deployment
    spec = {k: v for k, v in (deployment.get("spec") or {}).items() if k != "replicas"}
    return {**deployment, "spec": spec}


# Quantities the API server re-spells (0.5 -> 500m, 1024Mi -> 1Gi): compared by amount.
_QUANTITY_MAPS = frozenset({"requests", "limits"})  # container resources: each value a quantity
_QUANTITY_FIELDS = frozenset({"sizeLimit"})  # emptyDir

# Maps of strings (Go's map[string]string) keep an entry whose value is "": in them a missing
# key is drift, even for "" (a label or annotation someone removed).
_STRING_MAPS = frozenset({"labels", "annotations", "nodeSelector", "matchLabels", "selector"})


def is_subset(wanted: Any, actual: Any) -> bool:
    """True if every field we apply is present with the same value (our drift check).

    A field we apply as "", [] or {} counts as present when the object has no such key: the API
    server leaves those out of every built-in object it returns (see :func:`_is_left_out`).
    """
    if isinstance(wanted, PackedJSON):
        wanted = wanted.unpack()
    if isinstance(actual, PackedJSON):
        actual = actual.unpack()
    return _is_subset(wanted, actual, "")


def _is_subset(wanted: Any, actual: Any, field: str) -> bool:
    """:func:`is_subset` of the value of ``field`` (the key it sits under; "" at the top)."""
    if isinstance(wanted, dict):
        if not isinstance(actual, dict):
            return False
        of_strings = field in _STRING_MAPS
        for key, value in wanted.items():
            found = actual.get(key)
            if found is None and _is_left_out(value, of_strings=of_strings):
                continue
            if key in _QUANTITY_MAPS and isinstance(value, dict):
                same = _is_subset_of_quantities(value, found)
            elif key in _QUANTITY_FIELDS:
                same = quantity.equal_quantities(value, found)
            else:
                same = _is_subset(value, found, key)
            if not same:
                return False
        return True
    if isinstance(wanted, list):
        return (
            isinstance(actual, list)
            and len(wanted) == len(actual)
            and all(_is_subset(w, a, field) for w, a in zip(wanted, actual, strict=True))
        )
    return bool(wanted == actual)


def _is_left_out(value: Any, *, of_strings: bool) -> bool:
    """Whether the API server leaves ``value`` out of the objects it returns: the zero value of
    a field Go tags ``omitempty``. An env entry applied as ``{"name": "X", "value": ""}`` comes
    back as ``{"name": "X"}``, a toleration's ``value: ""`` and an empty ``values`` list or
    ``matchLabels`` map are gone; compared as written, such a pool drifted on every Deployment
    event and resync (an apply and a DriftCorrected Event each, with nothing changed).

    "", [] and {} only. Not False or 0: the fields we write with them are pointers in Go, kept
    as written (``replicas: 0``, ``maxUnavailable: 0``, ``automountServiceAccountToken`` and
    ``enableServiceLinks: false``, ``tolerationSeconds: 0``), and one removed by hand is real
    drift (a pod given back an API token). Not "" in a map of strings (labels, annotations,
    ``nodeSelector``), which keeps it. A struct we write as {} (an empty ``nodeAffinity``) is
    kept too, but one removed changes nothing a pod does: it is not told from a map.
    """
    if isinstance(value, str):
        return not value and not of_strings
    return isinstance(value, list | dict) and not value


def _is_subset_of_quantities(wanted: Mapping[str, Any], actual: Any) -> bool:
    return isinstance(actual, dict) and all(
        quantity.equal_quantities(amount, actual.get(name)) for name, amount in wanted.items()
    )
