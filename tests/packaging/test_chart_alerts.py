"""The alert rules (deploy/alerts/workerfleet-alerts.yaml): valid, unit-tested, documented.

`promtool check rules` on the source and its generated fast variant; `promtool test rules` on
every suite in deploy/alerts/tests/; every alert of the product contract exists once, fires in a
suite and stays quiet in one, carries severity/summary/description/runbook, and uses only the
series docs/architecture.md lists, through per-pool recording rules (so operator restarts and
double scrapes do not matter) and never with increase()/rate() on a counter mirrored from Redis.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging_support import CACHE_BIN, ROOT, find_binary, run

pytestmark = pytest.mark.chart

ALERTS_DIR = ROOT / "deploy" / "alerts"
RULES = ALERTS_DIR / "workerfleet-alerts.yaml"
FAST_RULES = ALERTS_DIR / "workerfleet-alerts.fast.yaml"
SUITES = sorted((ALERTS_DIR / "tests").glob("*.yaml"))
RUNBOOKS = ROOT / "docs" / "runbooks.md"
WORKER_METRICS = ROOT / "worker_runtime" / "metrics.py"  # the series the workers export

PRODUCT_ALERTS = (
    "WorkerPoolDeadLetterGrowing",
    "WorkerPoolDeadLetterBacklog",
    "WorkerPoolDeadLetterStale",
    "WorkerPoolBacklogGrowingAtMaxReplicas",
    "WorkerPoolOldestJobTooOld",
    "WorkerPoolSubscriptionLagHigh",
    "WorkerPoolHighFailureRate",
    "WorkerPoolQueueUnreachable",
    "WorkerPoolDrainKilled",
    "WorkerPoolNotReady",
    "WorkerPoolReplicasNotReady",
    "WorkerPoolLeasesLost",
    "WorkerPoolRedisErrors",
    "WorkerfleetOperatorDown",
    "WorkerfleetOperatorReconcileErrors",
)
# Alerts whose value is not a count worth quoting: 0/1 reachability and readiness, absent().
NO_VALUE_IN_DESCRIPTION = {
    "WorkerPoolQueueUnreachable",
    "WorkerPoolNotReady",
    "WorkerfleetOperatorDown",
}


def _all_rules(path: Path = RULES) -> list[dict[str, Any]]:
    groups = yaml.safe_load(path.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def _rules(path: Path = RULES) -> dict[str, dict[str, Any]]:
    rules = [rule for rule in _all_rules(path) if "alert" in rule]
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names)), "an alert is defined twice"
    return {rule["alert"]: rule for rule in rules}


def _records(path: Path = RULES) -> dict[str, dict[str, Any]]:
    rules = [rule for rule in _all_rules(path) if "record" in rule]
    names = [rule["record"] for rule in rules]
    assert len(names) == len(set(names)), "a series is recorded twice"
    return {rule["record"]: rule for rule in rules}


@pytest.mark.parametrize("path", [RULES, FAST_RULES], ids=["rules", "fast-rules"])
def test_promtool_check_rules_is_clean(promtool: str, path: Path) -> None:
    done = run([promtool, "check", "rules", str(path)])
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(PRODUCT_ALERTS) + len(_records())} rules found" in done.stdout


@pytest.mark.parametrize("suite", SUITES, ids=[s.stem for s in SUITES])
def test_promtool_unit_tests_pass(promtool: str, suite: Path) -> None:
    done = run([promtool, "test", "rules", str(suite)])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_exactly_the_product_alerts_are_defined() -> None:
    assert sorted(_rules()) == sorted(PRODUCT_ALERTS)


def _cases() -> list[tuple[str, bool]]:
    """(alertname, fires) for every alert_rule_test case of every suite."""
    cases = []
    for suite in SUITES:
        for test in yaml.safe_load(suite.read_text())["tests"]:
            for case in test.get("alert_rule_test", []):
                cases.append((case["alertname"], bool(case.get("exp_alerts"))))
    return cases


@pytest.mark.parametrize("alert", PRODUCT_ALERTS)
def test_every_alert_has_a_suite_where_it_fires_and_one_where_it_stays_quiet(alert: str) -> None:
    cases = _cases()
    assert (alert, True) in cases, f"{alert} never fires in deploy/alerts/tests"
    assert (alert, False) in cases, f"{alert} is never shown to stay quiet"


@pytest.mark.parametrize("alert", PRODUCT_ALERTS)
def test_every_alert_carries_severity_summary_description_command_and_runbook(alert: str) -> None:
    rule = _rules()[alert]
    assert rule["labels"]["severity"] in {"warning", "critical"}
    annotations = rule["annotations"]
    assert set(annotations) == {"summary", "description", "runbook_url"}
    description = annotations["description"]
    if alert.startswith("WorkerPool"):
        for label in ("namespace", "pool", "queue"):
            assert f"$labels.{label}" in description, f"{alert} description lacks {label}"
    if alert not in NO_VALUE_IN_DESCRIPTION:
        assert "$value" in description, f"{alert} description lacks the current value"
    # The command to inspect, ready to paste.
    assert re.search(r"`(kubectl|workerfleet) [^`]+`", description), alert
    if "DeadLetter" in alert:
        assert "workerfleet dlq ls --queue {{ $labels.queue }}" in description


def _kubectl_commands(description: str) -> list[list[str]]:
    """The kubectl commands of a description's backticked commands, as argv lists.

    `{{ $labels.x }}` becomes x; a `$(...)` substitution is a command of its own, then a value;
    each `|` stage that is kubectl counts (the others, such as grep, are left out).
    """
    text = re.sub(r"\{\{ \$labels\.(\w+) \}\}", r"\1", description)
    commands = []
    for block in re.findall(r"`(kubectl [^`]+)`", text):
        inner = re.findall(r'"\$\(([^)]*)\)"', block)
        outer = re.sub(r'"\$\(([^)]*)\)"', "ns", block)
        for command in (*inner, outer):
            for stage in command.split("|"):
                argv = shlex.split(stage)
                if argv[0] == "kubectl":
                    commands.append(argv[1:])
    return commands


@pytest.mark.parametrize("alert", PRODUCT_ALERTS)
def test_every_kubectl_command_an_alert_gives_is_one_kubectl_accepts(
    alert: str, tmp_path: Path
) -> None:
    # Given the real kubectl, pointed at a server that is not there (flags are checked first)
    kubectl = find_binary("kubectl", CACHE_BIN / "kubectl")
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(UNREACHABLE_KUBECONFIG)
    commands = _kubectl_commands(_rules()[alert]["annotations"]["description"])
    for argv in commands:
        # When on-call pastes the command
        done = run([kubectl, "--kubeconfig", str(kubeconfig), "--request-timeout=2s", *argv])
        # Then kubectl gets as far as the cluster: no unknown flag, no usage error
        assert "See 'kubectl" not in done.stderr, (argv, done.stderr)
        assert "unknown" not in done.stderr.lower(), (argv, done.stderr)
        assert "connect" in done.stderr or "refused" in done.stderr, (argv, done.stderr)


UNREACHABLE_KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters:
  - name: none
    cluster: {server: "https://127.0.0.1:1"}
users:
  - name: none
    user: {token: none}
contexts:
  - name: none
    context: {cluster: none, user: none}
current-context: none
"""


def test_the_operator_log_command_reads_only_workerfleet_operators() -> None:
    # app.kubernetes.io/component=operator alone also matches other products' operators.
    description = _rules()["WorkerfleetOperatorReconcileErrors"]["annotations"]["description"]
    selector = "app.kubernetes.io/name=workerfleet,app.kubernetes.io/component=operator"
    (logs,) = [argv for argv in _kubectl_commands(description) if argv[0] == "logs"]
    assert logs[logs.index("-l") + 1] == selector
    assert "-A" not in logs


def _runbook_anchors() -> set[str]:
    headings = re.findall(r"^#+ (.+)$", RUNBOOKS.read_text(), re.MULTILINE)
    return {re.sub(r"[^a-z0-9 -]", "", h.strip().lower()).replace(" ", "-") for h in headings}


@pytest.mark.parametrize("alert", PRODUCT_ALERTS)
def test_every_runbook_url_points_at_a_section_of_docs_runbooks(alert: str) -> None:
    url = _rules()[alert]["annotations"]["runbook_url"]
    page, _, anchor = url.partition("#")
    assert page.endswith("/docs/runbooks.md")
    assert anchor == alert.lower()
    assert anchor in _runbook_anchors(), f"docs/runbooks.md has no section for {alert}"


def _architecture_metrics() -> set[str]:
    text = (ROOT / "docs" / "architecture.md").read_text()
    metrics = text[text.index("## Metrics") :]
    return set(re.findall(r"`(workerfleet_[a-z_]+)", metrics[: metrics.index("\n## ")]))


def _series_of(expr: str) -> set[str]:
    """Metric names an expression reads (recorded names whole, with their colons)."""
    return set(re.findall(r"(?<![\w:])([a-z_]+:[a-z_]+:[a-z_0-9]+|workerfleet_[a-z_]+|up)\b", expr))


def test_the_rules_use_only_the_series_from_the_architecture_and_up() -> None:
    allowed = _architecture_metrics() | {"up"}
    assert "workerfleet_pool_dead_letter_alert_threshold" in allowed  # the contract was parsed
    assert "workerfleet_leases_lost_total" in allowed
    records = _records()
    for name, rule in [*_rules().items(), *records.items()]:
        names = _series_of(rule["expr"])
        assert names, name
        raw = {n for n in names if ":" not in n}
        assert raw <= allowed, f"{name} uses {sorted(raw - allowed)}"
        assert {n for n in names if ":" in n} <= set(records), name


def test_pool_alerts_read_only_the_per_pool_recording_rules() -> None:
    # An operator restart (new pod/instance labels) or a ServiceMonitor plus a PodMonitor (two
    # series per pool) must not split a pool in two: alerts see one series per pool.
    for alert, rule in _rules().items():
        if alert == "WorkerfleetOperatorDown":
            continue
        raw = {n for n in _series_of(rule["expr"]) if ":" not in n}
        assert not raw, f"{alert} reads {sorted(raw)} directly"
    for record, rule in _records().items():
        level = record.split(":")[0]
        labels = ", ".join(level.split("_"))
        growth = record.split(":")[-1].startswith("growth")
        assert f"by ({labels})" in rule["expr"] or growth, record


def test_no_rule_applies_increase_or_rate_to_a_counter_mirrored_from_redis() -> None:
    # They step back with Redis (failover, restore); increase() would count the whole counter.
    for rule in _all_rules():
        assert not re.search(r"(increase|rate|irate|resets)\(workerfleet_pool_", rule["expr"]), rule


def test_the_dead_letter_threshold_comes_from_the_pool_spec_metric() -> None:
    expr = _rules()["WorkerPoolDeadLetterBacklog"]["expr"]
    assert "workerfleet_pool_dead_letter_alert_threshold" in expr
    assert not re.search(r">=\s*\d", expr), "the threshold must not be hard-coded"


def test_the_fast_rules_shorten_every_window_for_the_demo() -> None:
    fast = _rules(FAST_RULES)
    normal = _rules()
    assert sorted(fast) == sorted(normal)
    for alert, rule in fast.items():
        assert re.fullmatch(r"\d+s", rule["for"]), (alert, rule["for"])
        assert int(rule["for"][:-1]) <= 45
        assert not re.search(r"\[\d+m\]", rule["expr"]), alert
        assert rule["annotations"] == normal[alert]["annotations"]


FAST_SUITE = """
rule_files: [{rules}]
evaluation_interval: 1s
tests:
  - interval: 1s
    input_series:
      - series: >-
          workerfleet_pool_jobs_dead_lettered_total{{namespace="local",pool="demo",queue="demo"}}
        values: 0x10 2x60
    alert_rule_test:
      - {{eval_time: 9s, alertname: WorkerPoolDeadLetterGrowing, exp_alerts: []}}
      # Then the alert fires within seconds of the first dead letter
      - eval_time: 13s
        alertname: WorkerPoolDeadLetterGrowing
        exp_alerts:
          - exp_labels: {{severity: warning, namespace: local, pool: demo, queue: demo}}
            exp_annotations:
              summary: Jobs of pool local/demo are being dead-lettered.
              description: >-
                2 jobs of queue demo (WorkerPool local/demo) went to the dead-letter queue in the
                last 5 minutes. They will not run again until replayed. Inspect them with
                `kubectl -n local exec deploy/demo -- workerfleet dlq ls --queue demo` and
                `workerfleet dlq show` for the error history.
              runbook_url: {runbook}
      # And it resolves 15 s (5 min / 20) after the last one
      - {{eval_time: 40s, alertname: WorkerPoolDeadLetterGrowing, exp_alerts: []}}
"""


def test_the_demo_sees_dead_letter_growing_fire_within_30_seconds(
    promtool: str, tmp_path: Path
) -> None:
    # Given the fast rules, scraped and evaluated every second as in `workerfleet demo`
    # When 2 jobs are dead-lettered 10 s after the operator's first scrape
    runbook = _rules()["WorkerPoolDeadLetterGrowing"]["annotations"]["runbook_url"]
    path = tmp_path / "fast-suite.yaml"
    path.write_text(FAST_SUITE.format(rules=FAST_RULES, runbook=runbook))
    done = run([promtool, "test", "rules", str(path)])
    assert done.returncode == 0, done.stdout + done.stderr


def _documented_inhibitions() -> list[dict[str, Any]]:
    """The inhibit_rules of the runbook's "Inhibitions" section."""
    text = RUNBOOKS.read_text()
    section = text[text.index("## Inhibitions") :]
    block = section[section.index("```yaml\n") + 8 : section.index("```\n", 8)]
    rules: list[dict[str, Any]] = yaml.safe_load(block)["inhibit_rules"]
    return rules


def test_the_documented_inhibitions_name_existing_alerts_and_their_labels() -> None:
    rules = _documented_inhibitions()
    alerts = set(_rules())
    assert len(rules) >= 4
    for rule in rules:
        for matcher in (*rule["source_matchers"], *rule["target_matchers"]):
            parsed = re.fullmatch(r'(\w+)(=~|!~|=)"([^"]+)"', matcher)
            assert parsed, matcher
            name, op, value = parsed.groups()
            assert name == "alertname"
            matched = {a for a in alerts if re.fullmatch(value, a)}
            assert matched, f"{matcher} matches no alert"
            if op == "=":
                assert value in alerts
        # Pool alerts carry exactly namespace, pool and queue: the labels an inhibition can equal.
        assert set(rule.get("equal", [])) <= {"namespace", "pool", "queue"}


def _matches(matchers: list[str], labels: dict[str, str]) -> bool:
    """Alertmanager's matching: every matcher holds, regexes anchored, a missing label is ""."""
    for matcher in matchers:
        parsed = re.fullmatch(r'(\w+)(=~|!~|!=|=)"([^"]*)"', matcher)
        assert parsed, matcher
        name, op, value = parsed.groups()
        have = labels.get(name, "")
        found = re.fullmatch(value, have) is not None if "~" in op else have == value
        if found == op.startswith("!"):
            return False
    return True


def _inhibited(target: dict[str, str], firing: list[dict[str, str]]) -> bool:
    """Whether the documented inhibit_rules mute ``target`` while ``firing`` fire."""
    return any(
        _matches(rule["target_matchers"], target)
        and any(
            source is not target
            and _matches(rule["source_matchers"], source)
            and all(source.get(k, "") == target.get(k, "") for k in rule.get("equal", []))
            for source in firing
        )
        for rule in _documented_inhibitions()
    )


def _pool_alert(name: str, namespace: str) -> dict[str, str]:
    return {"alertname": name, "namespace": namespace, "pool": "orders", "queue": "orders"}


def test_no_documented_inhibition_silences_new_dead_letters_while_the_operator_is_up() -> None:
    # A new burst of dead letters always pages: an old, unreplayed dead letter keeps the backlog
    # alert firing for days, and it must not hide WorkerPoolDeadLetterGrowing meanwhile.
    growing = _pool_alert("WorkerPoolDeadLetterGrowing", "shop")
    others = [_pool_alert(name, "shop") for name in _rules() if name.startswith("WorkerPool")]
    assert not _inhibited(growing, [growing, *others])
    down = {"alertname": "WorkerfleetOperatorDown", "namespace": "shop"}
    assert _inhibited(growing, [growing, down])


def _worker_fed_alerts() -> set[str]:
    """The pool alerts that read only series the workers export (not the operator)."""
    worker_series = set(re.findall(r'"(workerfleet_\w+)"', WORKER_METRICS.read_text()))
    records = _records()
    return {
        name
        for name, rule in _rules().items()
        if name.startswith("WorkerPool")
        and (read := [r for r in records if r in rule["expr"]])
        and all(
            set(re.findall(r"workerfleet_\w+", records[r]["expr"])) <= worker_series for r in read
        )
    }


def test_an_operator_down_mutes_only_its_own_pools_and_never_the_workers_own_alerts() -> None:
    # Given two installs, each watching its own namespace, and team-a's operator down
    down = {
        "alertname": "WorkerfleetOperatorDown",
        "namespace": "team-a",
        "job": "workerfleet-operator",
    }
    pool_alerts = sorted(name for name in _rules() if name.startswith("WorkerPool"))
    worker_fed = _worker_fed_alerts()
    assert worker_fed == {"WorkerPoolLeasesLost", "WorkerPoolRedisErrors"}
    # When any pool alert fires in either install
    team_a = {name: _inhibited(_pool_alert(name, "team-a"), [down]) for name in pool_alerts}
    team_b = {name: _inhibited(_pool_alert(name, "team-b"), [down]) for name in pool_alerts}
    # Then team-b's all page, team-a's workers' own alerts page (their pods are still scraped),
    # and team-a's alerts on the operator's stale series are muted
    assert not any(team_b.values()), team_b
    assert {name for name, muted in team_a.items() if not muted} == worker_fed


def test_every_alert_can_be_turned_off_by_name_in_the_chart() -> None:
    # prometheusRule.disabledAlerts takes only names its schema lists: an alert missing there
    # cannot be turned off at all.
    schema = json.loads((ROOT / "charts" / "workerfleet" / "values.schema.json").read_text())
    items = schema["properties"]["prometheusRule"]["properties"]["disabledAlerts"]["items"]
    assert sorted(items["enum"]) == sorted(_rules())
