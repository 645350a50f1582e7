"""The chart's NOTES.txt and the docs: the Secret a WorkerPool names is created as the chart's
admission policy admits it (labelled workerfleet.io/usable=true in the same command).

Rendered by `helm install --dry-run=client` (no cluster); the Secret step is run with the real
kubectl up to the manifest it would apply (`--dry-run=client` and `label --local` need no cluster).
"""

from __future__ import annotations

import os
import re
import subprocess

import pytest
import yaml
from packaging_support import CACHE_BIN, CHART, NAMESPACE, RELEASE, ROOT, find_binary, run

pytestmark = pytest.mark.chart


def _notes(helm: str, *args: str) -> str:
    done = run([helm, "install", RELEASE, str(CHART), "-n", NAMESPACE, "--dry-run=client", *args])
    assert done.returncode == 0, done.stderr
    return done.stdout[done.stdout.index("NOTES:") :]


def _secret_step(notes: str) -> str:
    """Step 2's command, continuation lines joined."""
    step = re.sub(r"\\\n\s*", "", notes[notes.index("\n2. ") : notes.index("\n3. ")])
    (command,) = re.findall(r"^\s+(kubectl -n <namespace> create secret .*)$", step, re.M)
    return str(command)


@pytest.mark.parametrize(
    ("args", "label"),
    [
        ((), "workerfleet.io/usable"),
        (("--set", "admissionPolicy.secretLabel=example.com/ok"), "example.com/ok"),
    ],
    ids=["default", "custom-label"],
)
def test_the_notes_create_the_redis_secret_with_the_label_the_admission_policy_requires(
    helm: str, args: tuple[str, ...], label: str
) -> None:
    # Given the Secret step of the NOTES
    command = _secret_step(_notes(helm, *args))
    stages = [stage.strip() for stage in command.split("|")]
    assert stages[-1] == "kubectl apply -f -"
    # When its stages before `kubectl apply` run with the real kubectl, without a cluster
    kubectl = find_binary("kubectl", CACHE_BIN / "kubectl")
    local = " | ".join(stages[:-1]).replace("kubectl -n <namespace>", "kubectl -n team-a")
    local = re.sub(r"\bkubectl\b", kubectl, local)
    done = subprocess.run(
        ["bash", "-o", "pipefail", "-c", local],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "KUBECONFIG": os.devnull},
    )
    assert done.returncode == 0, done.stderr
    # Then what `kubectl apply` gets is the Secret, carrying the label, in one object
    secret = yaml.safe_load(done.stdout)
    assert secret["kind"] == "Secret"
    assert secret["metadata"]["labels"] == {label: "true"}
    assert "url" in secret["data"]


# Where a Secret that a WorkerPool names is created: the docs and the samples' comments.
SECRET_DOCS = [
    "README.md",
    "docs/quickstart-kubernetes.md",
    "docs/runbooks.md",
    *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "deploy" / "samples").glob("*.yaml")),
]
LABELLED = "| kubectl label --local -f - workerfleet.io/usable=true -o yaml | kubectl apply -f -"


@pytest.mark.parametrize("doc", SECRET_DOCS)
def test_every_pool_secret_the_docs_create_is_labelled_in_the_same_command(doc: str) -> None:
    # Comment markers dropped and continuation lines joined: one command per line.
    text = re.sub(r"^#\s?", "", (ROOT / doc).read_text(), flags=re.MULTILINE)
    text = re.sub(r"\\\n\s*", "", text)
    for command in re.findall(r"kubectl .*create secret generic .*", text):
        assert LABELLED in command, command
