"""Two demos at once: the second does not write into the output directory the first writes.

Both wrote ``decisions.jsonl``, ``history.json``, the chart and the worker logs of one
``demo-out`` (the second truncated the first's decision log and removed its worker logs; the
events demo removed the first's history under it, so the first would count its events lost), and
each summary pointed at files that held the other run. The second now stops before writing
anything and says which directory is taken; another ``--out`` runs beside it.
"""

from __future__ import annotations

import json
import pathlib
import threading

import pytest
from workerfleet_operator.local import demo, events_demo, runner

pytestmark = pytest.mark.slow


@pytest.mark.timeout(180)
def test_a_second_demo_in_the_same_out_dir_refuses_and_leaves_the_first_ones_output_whole(
    tmp_path: pathlib.Path,
) -> None:
    # Given a demo running with its output in out/
    out = tmp_path / "out"
    first: list[demo.DemoResult] = []
    loaded = threading.Event()

    def note_load(snapshot: runner.Snapshot, phase: str) -> None:
        if snapshot.replicas > 0:
            loaded.set()

    thread = threading.Thread(
        target=lambda: first.append(
            demo.run_demo(seconds=10, out_dir=out, use_prometheus=False, on_snapshot=note_load)
        )
    )
    thread.start()
    try:
        assert loaded.wait(60), "the first demo never scaled up"
        # When a second demo starts with the same out/
        with pytest.raises(OSError, match="another demo") as refused:
            demo.run_demo(seconds=3, out_dir=out, use_prometheus=False)
        # Then it names the directory
        assert refused.value.filename == str(out)
    finally:
        thread.join(150)
    # And the first demo's output is its own: its decisions, its history, its worker logs
    (result,) = first
    decisions = (out / "decisions.jsonl").read_text().splitlines()
    assert len(decisions) == result.scaling.scale_ups + result.scaling.scale_downs
    history = json.loads((out / "history.json").read_text())
    assert len(history["enqueued"]) == result.enqueued > 0
    assert result.lost == 0 and result.pending == 0
    logs = sorted(p.name for p in (out / "worker-logs").glob("thumbnails-*.log"))
    assert len(logs) >= result.scaling.peak_replicas > 0


def test_a_second_events_demo_does_not_remove_the_history_of_the_one_writing_there(
    tmp_path: pathlib.Path,
) -> None:
    # Given an events demo writing to out/ (its claim held) with a receipt in its history
    out = tmp_path / "out"
    with demo.claim_out_dir(out):
        receipt = out / "history" / "receipts-1.jsonl"
        receipt.parent.mkdir(parents=True)
        receipt.write_text('{"event": "first demo"}\n')
        # When another events demo starts with the same out/
        with pytest.raises(OSError, match="another demo"):
            events_demo.run_events_demo(seconds=1, out_dir=out, use_prometheus=False)
        # Then the first one's history is still there
        assert receipt.read_text() == '{"event": "first demo"}\n'
