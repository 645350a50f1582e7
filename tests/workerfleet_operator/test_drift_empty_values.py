"""Empty values the API server leaves out are not drift; an edit of what we wrote still is.

The API server returns built-in objects without the zero values of fields Go tags
``omitempty``: an env entry applied as ``{"name": "X", "value": ""}`` comes back as
``{"name": "X"}``, a toleration's ``value: ""`` and an empty ``values`` list are gone. The drift
check compared them as written: such a pool drifted forever, and every Deployment event and
resync re-applied its Deployment and posted a DriftCorrected Event with nothing changed.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from workerfleet_operator import api, manifests
from workerfleet_operator.shell import drift

from tests.workerfleet_operator.conftest import (
    GROUP,
    NAMESPACE,
    OperatorRunner,
    QueueRedis,
    build_pool,
    build_secret,
    events_for,
    wait_for_condition,
    wait_until,
)
from tests.workerfleet_operator.emulator import Emulator, Obj, Resource
from tests.workerfleet_operator.test_operator_resync import WRITES, _requests

_STRING_MAPS = ("labels", "annotations", "nodeSelector", "matchLabels", "selector")


def _drop_empty(value: Any, field: str = "") -> Any:
    """``value`` as the API server returns a built-in object: "" and [] of struct fields gone
    (Go's omitempty), "" kept in maps of strings, {} kept (a pointer to a struct)."""
    if isinstance(value, list):
        return [_drop_empty(v, field) for v in value]
    if not isinstance(value, dict):
        return value
    kept = {}
    for key, item in value.items():
        if field not in _STRING_MAPS and item in ("", []):
            continue
        kept[key] = _drop_empty(item, key)
    return kept


class OmitEmptyEmulator(Emulator):
    """The API emulator storing Deployments as the API server does, without their empty values."""

    def _default(self, res: Resource, body: Obj) -> None:
        super()._default(res, body)
        if res.plural == "deployments":
            dropped = _drop_empty(body)
            body.clear()
            body.update(dropped)


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    with OmitEmptyEmulator() as emu:
        yield emu


EMPTY_VALUES = {
    "env": [{"name": "FEATURE_FLAGS", "value": ""}, {"name": "REGION", "value": "eu"}],
    "scheduling": {
        "tolerations": [
            {"key": "dedicated", "operator": "Equal", "value": "", "effect": "NoSchedule"}
        ],
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {"matchExpressions": [{"key": "spot", "operator": "DoesNotExist"}]}
                    ]
                }
            }
        },
    },
}


def _applied_deployment(**spec: Any) -> dict[str, Any]:
    body = build_pool("emails", **spec)
    body["metadata"].update(uid="uid-1", generation=1)
    parsed = api.parse_pool(body)
    assert isinstance(parsed, api.Pool), parsed
    return manifests.build_deployment(parsed, replicas=None)


def _pod_spec(deployment: dict[str, Any]) -> dict[str, Any]:
    pod_spec: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return pod_spec


def test_an_empty_env_value_and_toleration_value_the_api_server_left_out_are_not_drift() -> None:
    # Given the Deployment we apply for a pool with an env value "" and a toleration value ""
    ours = _applied_deployment(**EMPTY_VALUES)
    assert {"name": "FEATURE_FLAGS", "value": ""} in _pod_spec(ours)["containers"][0]["env"]
    # When the API server returns it as it stores it: those keys gone, its defaults added
    stored = _drop_empty(copy.deepcopy(ours))
    stored["metadata"]["resourceVersion"] = "7"
    _pod_spec(stored)["dnsPolicy"] = "ClusterFirst"
    env = _pod_spec(stored)["containers"][0]["env"]
    assert {"name": "FEATURE_FLAGS"} in env
    assert _pod_spec(stored)["tolerations"] == [
        {"key": "dedicated", "operator": "Equal", "effect": "NoSchedule"}
    ]
    # Then it is no drift, packed as the controller keeps it or not
    assert drift.is_subset(ours, stored)
    assert drift.is_subset(drift.PackedJSON(ours), stored)


@pytest.mark.parametrize(
    ("wanted", "stored"),
    [
        pytest.param({"values": []}, {}, id="an_empty_list"),
        pytest.param({"matchLabels": {}}, {}, id="an_empty_map"),
        pytest.param({"a": {"b": [{"value": ""}]}}, {"a": {"b": [{}]}}, id="nested_in_a_list"),
    ],
)
def test_other_empty_values_the_api_server_leaves_out_are_not_drift(
    wanted: dict[str, Any], stored: dict[str, Any]
) -> None:
    assert drift.is_subset(wanted, stored)


@pytest.mark.parametrize(
    ("wanted", "stored"),
    [
        # an empty value changed by hand
        pytest.param(
            {"env": [{"name": "X", "value": ""}]}, {"env": [{"name": "X", "value": "1"}]}, id="set"
        ),
        # an entry of ours removed whole
        pytest.param({"env": [{"name": "X", "value": ""}]}, {"env": []}, id="entry_removed"),
        # a map of strings keeps "": a label or annotation removed by hand is drift
        pytest.param({"labels": {"tier": ""}}, {"labels": {}}, id="label_removed"),
        pytest.param({"annotations": {"note": ""}}, {}, id="annotation_removed"),
        # false and 0 of the fields we write are kept by the API server (Go pointers)
        pytest.param({"automountServiceAccountToken": False}, {}, id="api_token_no_longer_refused"),
        pytest.param({"enableServiceLinks": False}, {}, id="service_links_no_longer_off"),
        pytest.param({"replicas": 0}, {}, id="replicas_0_removed"),
        pytest.param(
            {"rollingUpdate": {"maxUnavailable": 0}}, {"rollingUpdate": {}}, id="max_unavailable"
        ),
    ],
)
def test_an_edit_of_what_we_wrote_is_still_drift(
    wanted: dict[str, Any], stored: dict[str, Any]
) -> None:
    assert not drift.is_subset(wanted, stored)


def test_a_pool_with_empty_values_converges_and_its_resyncs_write_nothing(
    emulator: Emulator, queue_redis: QueueRedis, operator: Callable[..., OperatorRunner]
) -> None:
    # Given a pool with an env value "" and a toleration value "", on an API server that leaves
    # both out of the Deployment it stores, resyncing often
    emulator.create("secrets", build_secret("redis-creds", queue_redis.url))
    operator(resync_seconds=0.3)
    emulator.create("workerpools", build_pool("emails", **EMPTY_VALUES), group=GROUP)
    wait_for_condition(emulator, "emails", "Ready", message="not Ready")
    stored = emulator.get("deployments", NAMESPACE, "emails", group="apps")
    assert stored is not None
    assert {"name": "FEATURE_FLAGS"} in _pod_spec(stored)["containers"][0]["env"]
    writes = _requests(emulator, WRITES, "/deployments/emails")
    reads = _requests(emulator, ("GET",), "/deployments/emails")
    # When five resyncs go by
    wait_until(
        lambda: _requests(emulator, ("GET",), "/deployments/emails") >= reads + 5,
        message="the operator did not resync",
    )
    # Then none of them wrote the Deployment, and nobody was told it drifted
    assert _requests(emulator, WRITES, "/deployments/emails") == writes
    reasons = [e["reason"] for e in events_for(emulator, "emails")]
    assert "DriftCorrected" not in reasons, reasons
