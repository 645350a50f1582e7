"""The operator's ServiceMonitor/PodMonitor never time out later than they scrape.

The Prometheus Operator drops a ServiceMonitor or PodMonitor whose scrapeTimeout is longer than
its interval ("scrapeTimeout greater than scrapeInterval"): the operator goes unscraped,
WorkerfleetOperatorDown pages and every per-pool alert is blind. The schema checks each value
alone, so the template compares them and refuses the render naming both.
"""

from __future__ import annotations

import pytest
from packaging_support import CHART, Render, of_kind, run

pytestmark = pytest.mark.chart

MONITORS = (
    ("serviceMonitor", "ServiceMonitor", "endpoints"),
    ("podMonitor", "PodMonitor", "podMetricsEndpoints"),
)


@pytest.mark.parametrize(("value", "kind", "endpoints"), MONITORS)
@pytest.mark.parametrize(
    ("interval", "timeout"), [("5s", "10s"), ("1m", "1m30s"), ("1s", "1500ms")]
)
def test_a_scrape_timeout_longer_than_the_interval_is_refused_naming_both(
    helm: str, value: str, kind: str, endpoints: str, interval: str, timeout: str
) -> None:
    # Given a monitor that would scrape every `interval` with a longer timeout (the first: only
    # the interval lowered from the default 30s, the timeout left at its default 10s)
    args = [
        "--set",
        f"metrics.{value}.enabled=true",
        "--set",
        f"metrics.{value}.interval={interval}",
    ]
    if timeout != "10s":
        args += ["--set", f"metrics.{value}.scrapeTimeout={timeout}"]
    # When the chart is rendered
    done = run([helm, "template", "workerfleet", str(CHART), *args])
    # Then it fails, naming both values, instead of shipping a monitor Prometheus drops
    assert done.returncode != 0
    assert f"metrics.{value}.scrapeTimeout ({timeout})" in done.stderr, done.stderr
    assert f"metrics.{value}.interval ({interval})" in done.stderr, done.stderr


@pytest.mark.parametrize(("value", "kind", "endpoints"), MONITORS)
@pytest.mark.parametrize(
    ("interval", "timeout"), [("5s", "5s"), ("2m", "1m30s"), ("1m", "59s"), ("2s", "1500ms")]
)
def test_a_scrape_timeout_up_to_the_interval_renders_as_given(
    render: Render, value: str, kind: str, endpoints: str, interval: str, timeout: str
) -> None:
    (monitor,) = of_kind(
        render(
            "default",
            "--set", f"metrics.{value}.enabled=true",
            "--set", f"metrics.{value}.interval={interval}",
            "--set", f"metrics.{value}.scrapeTimeout={timeout}",
        ),
        kind,
    )  # fmt: skip
    (endpoint,) = monitor["spec"][endpoints]
    assert (endpoint["interval"], endpoint["scrapeTimeout"]) == (interval, timeout)
