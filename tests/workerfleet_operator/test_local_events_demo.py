"""``workerfleet demo --scenario events`` and the history it checks delivery against.

The demo runs as a user runs it (the console script, a real subprocess): embedded
redis-server, the three pools of examples/events/ as real worker processes scaled by the
operator's autoscaler, and orders published through ``App.publish``. Its last line is
computed from the publisher's record, the handlers' witness lines and the ack markers.
"""

from __future__ import annotations

import pathlib
import re
import shutil
import subprocess
import sys

import pytest
from workerfleet_operator.local import events_demo

EVENTS_LINE = re.compile(
    r"events: published=(\d+) subscriptions=(\d+) delivered=(\d+) lost=(\d+) "
    r"peak_replicas=(\d+)/(\d+)/(\d+)"
)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_the_events_demo_delivers_every_order_to_all_three_subscriptions_scaled_apart(
    tmp_path: pathlib.Path,
) -> None:
    # Given the example's three subscription pools on an embedded Redis
    # When the events demo publishes a short burst of orders and lets every pool settle
    done = subprocess.run(
        [
            str(pathlib.Path(sys.executable).parent / "workerfleet"),
            "demo",
            "--scenario",
            "events",
            "--seconds",
            "12",
            "--no-view",
            "--no-prometheus",
            "--out",
            str(tmp_path / "out"),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=170,
    )
    # Then it succeeds and ends with the events line: every published order delivered once
    # to each of the three subscriptions, none lost
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    last = done.stdout.strip().splitlines()[-1]
    match = EVENTS_LINE.fullmatch(last)
    assert match is not None, done.stdout[-4000:]
    published, subscriptions, delivered, lost, email, analytics, fulfilment = map(
        int, match.groups()
    )
    assert published > 20
    assert (subscriptions, delivered, lost) == (3, 3 * published, 0)
    # And each pool scaled on its own subscription: the slow fulfilment pool furthest, the
    # fast analytics pool least
    assert fulfilment > analytics >= 1 and email >= 1
    # And the summary shows one order's three-level trace
    assert re.search(
        r"\n    event shop\.order\.placed \w+\n      job ship-parcel \w+\n"
        r"        event shop\.order\.fulfilled fulfilled-o\d+\n",
        done.stdout,
    ), done.stdout[-2000:]


SUBS = [
    events_demo.Subscription("shop-email", "shop.order.placed", "email", "shop.order.placed:email"),
    events_demo.Subscription(
        "shop-fulfilment", "shop.order.placed", "fulfilment", "shop.order.placed:fulfilment"
    ),
]


def test_a_pair_is_delivered_only_when_its_handler_finished_it_and_its_ack_was_stored() -> None:
    # Given three events the publisher saw stored in both subscriptions
    published = [events_demo.Published(i, f"e{i}", 2, ("email", "fulfilment")) for i in range(3)]
    # and a history where e0 finished everywhere (fulfilment on a second attempt), e1's email
    # handler finished but its ack never stored the marker, and e2's fulfilment never ran
    witness = {
        ("email", "e0"): 1,
        ("fulfilment", "e0"): 2,
        ("email", "e1"): 1,
        ("fulfilment", "e1"): 1,
        ("email", "e2"): 1,
    }
    acks = {("shop.order.placed:email", "e0"), ("shop.order.placed:fulfilment", "e0")}
    acks |= {("shop.order.placed:fulfilment", "e1"), ("shop.order.placed:email", "e2")}
    # When the history is checked, with e2 still waiting in the fulfilment queue
    outcomes = events_demo.check_history(
        published,
        SUBS,
        witness,
        acked=lambda queue, event: (queue, event) in acks,
        held=lambda queue, event: (queue, event) == ("shop.order.placed:fulfilment", "e2"),
    )
    # Then e1's e-mail is lost (finished, never acked, not in the broker), e2's fulfilment is
    # held, not lost, and the retried delivery is counted
    email, fulfilment = outcomes
    assert (email.expected, email.delivered, email.held, email.lost) == (3, 2, 0, 1)
    assert (fulfilment.delivered, fulfilment.retried, fulfilment.held, fulfilment.lost) == (
        2,
        1,
        1,
        0,
    )


def test_a_subscription_the_publisher_did_not_reach_is_not_expected_of_it() -> None:
    # Given an event stored in the e-mail subscription only (fulfilment registered later)
    published = [events_demo.Published(0, "e0", 2, ("email",))]
    # When the history is checked
    email, fulfilment = events_demo.check_history(
        published,
        SUBS,
        {("email", "e0"): 1},
        acked=lambda queue, event: True,
        held=lambda queue, event: False,
    )
    # Then fulfilment owes nothing and nothing is lost
    assert (email.delivered, email.lost) == (1, 0)
    assert (fulfilment.expected, fulfilment.delivered, fulfilment.lost) == (0, 0, 0)


def test_the_witness_keeps_whole_lines_and_skips_a_line_cut_by_a_kill(
    tmp_path: pathlib.Path,
) -> None:
    # Given two workers' witness files, one ending in half a line
    (tmp_path / "runs-1.jsonl").write_text(
        '{"group": "email", "event": "e0", "attempt": 2, "pid": 1, "t": 1.0}\n'
    )
    (tmp_path / "runs-2.jsonl").write_text(
        '{"group": "analytics", "event": "e0", "attempt": 1, "pid": 2, "t": 1.0}\n{"group": "an'
    )
    # When they are read
    runs = events_demo.read_witness(tmp_path)
    # Then the whole lines count, with the attempt that finished the event
    assert runs == {("email", "e0"): 2, ("analytics", "e0"): 1}


def test_the_example_pools_serve_the_three_subscriptions_of_one_topic() -> None:
    subs = [events_demo.subscription_of(pool) for pool in events_demo.load_pools()]
    assert [(s.topic, s.group) for s in subs] == [
        ("shop.order.placed", "email"),
        ("shop.order.placed", "analytics"),
        ("shop.order.placed", "fulfilment"),
    ]


def test_the_publish_plan_has_a_burst_well_above_its_lull() -> None:
    plan = events_demo.build_publish_plan(60)
    assert [p.name for p in plan] == ["warm-up", "burst", "lull", "bump"]
    assert plan[1].rate >= 10 * plan[2].rate
    assert plan[-1].end <= 60 * events_demo.PUBLISH_SHARE


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_the_lag_alert_fires_for_the_subscription_that_falls_behind_and_for_no_other(
    tmp_path: pathlib.Path,
) -> None:
    # Given the example with its fulfilment pool capped at 2 workers (4 orders at a time, each
    # 1-2 s), and a real Prometheus evaluating the project's fast alert rules on the fleet
    example = tmp_path / "events"
    shutil.copytree(events_demo.EXAMPLE, example)  # the files, not the package's links to them
    fulfilment = example / "fulfilment-pool.yaml"
    assert not fulfilment.is_symlink()
    fulfilment.write_text(fulfilment.read_text().replace("maxReplicas: 6", "maxReplicas: 2"))
    # When a burst of orders arrives
    result = events_demo.run_events_demo(
        seconds=20, out_dir=tmp_path / "out", example=example, use_prometheus=True
    )
    # Then Prometheus ran and WorkerPoolSubscriptionLagHigh fired for the fulfilment pool,
    # whose oldest order waited past its 10 s target, and not for e-mail or analytics
    assert result.prometheus.startswith("ran on 127.0.0.1:"), result.prometheus
    lag_alerts = {name for name in result.alerts if name.startswith("WorkerPoolSubscriptionLag")}
    assert lag_alerts == {"WorkerPoolSubscriptionLagHigh (shop-fulfilment)"}, result.alerts
    # And every order still reached all three subscriptions
    assert result.settled and result.lost == 0
    assert result.delivered == 3 * result.published > 0
    assert result.peaks["fulfilment"] == 2
