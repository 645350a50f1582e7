"""commonLabels and podLabels never name a label twice in a manifest.

A key the chart sets itself (its selector labels, part-of, version, ...) named again in
commonLabels, or a pod label named in both commonLabels and podLabels, rendered the key twice:
strict YAML readers refuse such a manifest ("mapping key ... already defined", naming neither
value), others keep the last value (a selector label changed that way no longer matches the
Deployment's selector). The render now fails naming the value to drop.
"""

from __future__ import annotations

import pytest
from packaging_support import CHART, Render, of_kind, run

pytestmark = pytest.mark.chart


def template(helm: str, *sets: str) -> tuple[int, str]:
    args = [arg for value in sets for arg in ("--set", value)]
    done = run([helm, "template", "workerfleet", str(CHART), *args])
    return done.returncode, done.stderr


@pytest.mark.parametrize(
    ("values", "named"),
    [
        (["commonLabels.app\\.kubernetes\\.io/part-of=payments"],
         "commonLabels.app.kubernetes.io/part-of is a label the chart sets itself"),
        (["commonLabels.app\\.kubernetes\\.io/instance=other"],
         "commonLabels.app.kubernetes.io/instance is a label the chart sets itself"),
        (["operator.podLabels.app\\.kubernetes\\.io/component=x"],
         "operator.podLabels.app.kubernetes.io/component is a label the chart sets itself"),
        (["console.enabled=true", "console.auth.existingSecret=s",
          "console.podLabels.helm\\.sh/chart=x"],
         "console.podLabels.helm.sh/chart is a label the chart sets itself"),
        (["commonLabels.team=a", "operator.podLabels.team=b"],
         "operator.podLabels.team is set by commonLabels too"),
    ],
)  # fmt: skip
def test_a_label_named_twice_fails_the_render_naming_the_value(
    helm: str, values: list[str], named: str
) -> None:
    # Given values that name a label the chart or commonLabels already set
    # When the chart is rendered
    code, stderr = template(helm, *values)
    # Then it fails, naming the value to leave out
    assert code != 0
    assert named in stderr, stderr


def test_labels_of_their_own_reach_every_resource_and_the_pods(render: Render) -> None:
    rendered = render(
        "default",
        "--set", "commonLabels.team=payments",
        "--set", "operator.podLabels.tier=control",
    )  # fmt: skip
    (deployment,) = of_kind(rendered, "Deployment")
    assert deployment["metadata"]["labels"]["team"] == "payments"
    pod = deployment["spec"]["template"]["metadata"]["labels"]
    assert (pod["team"], pod["tier"], pod["app.kubernetes.io/part-of"]) == (
        "payments",
        "control",
        "workerfleet",
    )
