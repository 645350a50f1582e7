"""The operator's Dockerfile and the documented worker-image base keep their essential lines.

These tests read the Dockerfiles (exec-form entrypoint, numeric non-root USER in the final stage,
pinned base, never `latest`) and import the example App by the module path its WorkerPool would
name. No container engine runs here: `make images` builds the same images without one, and
tests/e2e/test_images.py checks that those match these Dockerfiles.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import packaging_support
import pytest
from packaging_support import ROOT

pytestmark = pytest.mark.chart

OPERATOR = ROOT / "operator" / "Dockerfile"
WORKER = ROOT / "examples" / "worker-image" / "Dockerfile"


@pytest.mark.parametrize("path", [OPERATOR, WORKER], ids=["operator", "worker"])
def test_the_entrypoint_is_exec_form_with_no_shell(path: Path) -> None:
    entrypoints = [
        args for word, args in packaging_support.read_final_stage(path) if word == "ENTRYPOINT"
    ]
    assert len(entrypoints) == 1
    command = json.loads(entrypoints[0])  # exec form is a JSON array; shell form does not parse
    assert isinstance(command, list) and command[0] == "workerfleet"
    assert not {"sh", "/bin/sh", "bash", "/bin/bash", "-c"} & set(command)
    for word, args in packaging_support.read_final_stage(path):
        if word == "CMD":
            assert isinstance(json.loads(args), list)


def test_the_worker_image_runs_workerfleet_worker() -> None:
    (entrypoint,) = [
        args for word, args in packaging_support.read_final_stage(WORKER) if word == "ENTRYPOINT"
    ]
    assert json.loads(entrypoint) == ["workerfleet", "worker"]


def test_the_operator_image_runs_workerfleet_operator() -> None:
    stage = dict(packaging_support.read_final_stage(OPERATOR))
    assert json.loads(stage["ENTRYPOINT"]) == ["workerfleet"]
    assert json.loads(stage["CMD"]) == ["operator"]


def test_the_operator_image_carries_the_console_as_both_builds_install_it() -> None:
    # The chart's console Deployment runs `workerfleet console` from the operator image: the
    # Dockerfile and the engine-free builder (scripts/build-images.sh) install the same extras.
    (install,) = [
        args
        for word, args in packaging_support.read_instructions(OPERATOR)
        if "pip install" in args
    ]
    extras = re.search(r"\.\[([a-z,]+)\]", install)
    assert extras is not None and set(extras[1].split(",")) == {"operator", "console"}
    script = (ROOT / "scripts" / "build-images.sh").read_text()
    built = re.search(
        r'build_python_image workerfleet-operator "\$key" \S+ "\[([a-z,]+)\]"', script
    )
    assert built is not None and set(built[1].split(",")) == {"operator", "console"}


@pytest.mark.parametrize("path", [OPERATOR, WORKER], ids=["operator", "worker"])
def test_the_final_stage_runs_as_numeric_non_root_uid_10001(path: Path) -> None:
    users = [args for word, args in packaging_support.read_final_stage(path) if word == "USER"]
    assert users, "no USER in the final stage: the image would run as root"
    uid, _, gid = users[-1].partition(":")
    assert uid == "10001" and gid in ("", "10001")


@pytest.mark.parametrize("path", [OPERATOR, WORKER], ids=["operator", "worker"])
def test_the_base_is_pinned_and_never_latest(path: Path) -> None:
    steps = packaging_support.read_instructions(path)
    args = dict(a.split("=", 1) for word, a in steps if word == "ARG" and "=" in a)
    base = args["BASE_IMAGE"]
    assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", base), base
    for word, rest in steps:
        if word == "FROM":
            image = rest.split()[0]
            assert image == "${BASE_IMAGE}", image
            assert ":latest" not in rest
    # The digest pinning is documented right in the file.
    assert "@sha256:<digest>" in path.read_text()


def test_the_worker_image_documentation_states_the_rules() -> None:
    doc = (ROOT / "docs" / "worker-image.md").read_text()
    for essential in (
        'ENTRYPOINT ["workerfleet", "worker"]',
        "USER 10001:10001",
        "@sha256:<digest>",
        "PID 1",
    ):
        assert essential in doc


def test_the_example_app_imports_by_its_documented_module_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given the image's PYTHONPATH (/app holds examples/worker-image/emails)
    monkeypatch.syspath_prepend(str(WORKER.parent))
    monkeypatch.delitem(sys.modules, "emails", raising=False)
    monkeypatch.delitem(sys.modules, "emails.tasks", raising=False)
    # When the worker resolves spec.app "emails.tasks:app"
    from emails import tasks  # type: ignore[import-not-found]

    # Then it is an App on the sample's queue with the task registered by name
    assert tasks.app.queue == "email-notifications"
    assert list(tasks.app.tasks) == ["send-email"]
