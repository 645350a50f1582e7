"""The Grafana dashboard has the shape Grafana reads: each panel placed on the 24-column grid with
whole numbers and no two panels on the same cells, each threshold a list of colour steps, each
description text.

Three stat panels of the overview row once had their threshold steps in ``gridPos.w`` and one
of them its description in ``thresholds.steps``: valid JSON, but panels with no width to lay
out and no orange or red step to colour a growing DLQ or an unreachable queue. The panels'
queries are checked elsewhere (test_local_fleet_dashboard.py runs them on a real Prometheus);
this checks what Grafana does with the rest.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from packaging_support import ROOT

pytestmark = pytest.mark.chart

DASHBOARD = ROOT / "deploy" / "grafana" / "workerfleet-dashboard.json"
GRID_COLUMNS = 24


def _panels() -> Iterator[dict[str, Any]]:
    """Every panel, those inside collapsed rows too."""
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        yield panel
        yield from panel.get("panels", [])


def _cells(panel: dict[str, Any]) -> set[tuple[int, int]]:
    grid = panel["gridPos"]
    return {
        (x, y)
        for x in range(grid["x"], grid["x"] + grid["w"])
        for y in range(grid["y"], grid["y"] + grid["h"])
    }


def test_every_panel_sits_on_the_grid_with_whole_numbers_inside_its_24_columns() -> None:
    for panel in _panels():
        grid = panel["gridPos"]
        assert sorted(grid) == ["h", "w", "x", "y"], panel["title"]
        assert all(type(grid[k]) is int for k in grid), (panel["title"], grid)
        assert grid["w"] >= 1, panel["title"]
        assert grid["h"] >= 1, panel["title"]
        assert grid["x"] >= 0, panel["title"]
        assert grid["x"] + grid["w"] <= GRID_COLUMNS, panel["title"]


def test_no_two_panels_cover_the_same_cells() -> None:
    taken: dict[tuple[int, int], str] = {}
    for panel in _panels():
        for cell in _cells(panel):
            assert cell not in taken, f"{panel['title']!r} overlaps {taken[cell]!r} at {cell}"
            taken[cell] = panel["title"]


def test_every_threshold_is_a_list_of_colour_steps_from_the_base_upwards() -> None:
    checked = 0
    for panel in _panels():
        thresholds = panel.get("fieldConfig", {}).get("defaults", {}).get("thresholds")
        if thresholds is None:
            continue
        steps = thresholds["steps"]
        assert isinstance(steps, list), (panel["title"], steps)
        assert all(isinstance(s, dict) and isinstance(s.get("color"), str) for s in steps)
        # Grafana's base step has no value; the others rise
        assert steps[0]["value"] is None, panel["title"]
        values = [s["value"] for s in steps[1:]]
        assert all(isinstance(v, int | float) for v in values), (panel["title"], values)
        assert values == sorted(values), (panel["title"], values)
        checked += 1
    assert checked >= 6  # the overview row's stat panels at least


def test_the_overview_warns_in_colour_on_dead_letters_old_jobs_and_unreachable_queues() -> None:
    warned = {
        panel["title"]: [
            s["color"] for s in panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
        ]
        for panel in _panels()
        if panel["type"] == "stat"
    }
    assert warned["Dead letters"] == ["green", "orange"]
    assert warned["Oldest job age"] == ["green", "orange", "red"]
    assert warned["Queues unreachable"] == ["green", "red"]


def test_every_description_is_text_and_no_stat_panel_goes_without_one() -> None:
    for panel in _panels():
        if "description" in panel:
            assert isinstance(panel["description"], str), panel["title"]
        if panel["type"] == "stat":
            assert panel.get("description", "").strip(), panel["title"]
