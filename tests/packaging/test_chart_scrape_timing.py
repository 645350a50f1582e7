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


@pytest.mark.parametrize(("value", "kind", "endpoints"), MONITORS)
@pytest.mark.parametrize("duration", ["30s1m", "1m1h", "10ms5s", "1m1m", "90", "1.5m", ""])
def test_a_duration_the_prometheus_operator_refuses_is_refused_by_the_schema(
    helm: str, value: str, kind: str, endpoints: str, duration: str
) -> None:
    # Given a scrape interval whose units are out of order, repeated, missing or fractional
    # (the Prometheus Operator's own pattern refuses them when the monitor is applied)
    args = [
        "--set", f"metrics.{value}.enabled=true",
        "--set-string", f"metrics.{value}.interval={duration}",
    ]  # fmt: skip
    # When the chart is rendered
    done = run([helm, "template", "workerfleet", str(CHART), *args])
    # Then the values schema refuses it, naming the value
    assert done.returncode != 0
    assert f"/metrics/{value}/interval" in done.stderr, done.stderr
    assert "does not match pattern" in done.stderr, done.stderr


@pytest.mark.parametrize(("value", "kind", "endpoints"), MONITORS)
@pytest.mark.parametrize("duration", ["1h", "1h30m", "2m", "1m30s", "45s", "1s500ms", "500ms"])
def test_a_duration_in_prometheus_order_is_accepted(
    render: Render, value: str, kind: str, endpoints: str, duration: str
) -> None:
    (monitor,) = of_kind(
        render(
            "default",
            "--set", f"metrics.{value}.enabled=true",
            "--set", f"metrics.{value}.interval={duration}",
            "--set", f"metrics.{value}.scrapeTimeout=500ms",
        ),
        kind,
    )  # fmt: skip
    (endpoint,) = monitor["spec"][endpoints]
    assert endpoint["interval"] == duration
