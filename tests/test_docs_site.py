"""The docs site builds strictly, and a stale reference in the docs fails `make test`.

`make docs` runs the same two checks: `mkdocs build --strict` over mkdocs.yml + docs/ (links
and anchors between pages, the nav) and scripts/check_doc_paths.py (the repository paths and
tests the docs name). No external link is fetched.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from scripts import check_doc_paths

REPO = Path(__file__).resolve().parents[1]


def build_site(project: Path, out: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def copy_of_the_docs(tmp_path: Path) -> Path:
    project = tmp_path / "project"
    shutil.copytree(REPO / "docs", project / "docs")
    shutil.copy(REPO / "mkdocs.yml", project / "mkdocs.yml")
    return project


def test_the_docs_site_builds_strictly_without_a_single_warning(tmp_path: Path) -> None:
    result = build_site(REPO, tmp_path / "site")

    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "WARNING" not in output, output
    for page in ("index", "runtime", "queue-engine", "runbooks", "architecture", "e2e"):
        built = tmp_path / "site" / ("index.html" if page == "index" else f"{page}/index.html")
        assert built.is_file(), page


def append_to(page: str, text: str) -> Callable[[Path], None]:
    def _append(docs: Path) -> None:
        with (docs / page).open("a") as f:
            f.write(text)

    return _append


def remove(page: str) -> Callable[[Path], None]:
    return lambda docs: (docs / page).unlink()


def add_page(page: str) -> Callable[[Path], None]:
    return lambda docs: (docs / page).write_text("# A page nobody can reach\n")


@pytest.mark.parametrize(
    ("break_docs", "named"),
    [
        (append_to("runtime.md", "\nSee [the gone page](no-such-page.md).\n"), "no-such-page.md"),
        (append_to("runtime.md", "\nSee [a rule](runbooks.md#no-such-alert).\n"), "no-such-alert"),
        (remove("e2e.md"), "e2e.md"),
        (add_page("orphan.md"), "orphan.md"),
    ],
    ids=["broken-link", "broken-anchor", "nav-page-missing", "page-outside-nav"],
)
def test_a_broken_docs_site_fails_the_strict_build_naming_what_broke(
    tmp_path: Path, break_docs: Callable[[Path], None], named: str
) -> None:
    # Given a copy of the docs that builds, with one defect planted
    project = copy_of_the_docs(tmp_path)
    break_docs(project / "docs")

    # When the site is built as `make docs` builds it
    result = build_site(project, tmp_path / "site")

    # Then the build fails and its output names the defect
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert named in output, output


def test_every_repository_path_and_test_the_docs_name_exists() -> None:
    stale = check_doc_paths.find_stale_references(REPO)

    assert [str(ref) for ref in stale] == []


def test_a_sample_that_defines_its_own_test_names_no_test_but_a_call_of_one_still_does(
    tmp_path: Path,
) -> None:
    # Given a page whose sample defines a test of the reader's own, then names a missing one
    (tmp_path / "tests").mkdir()
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs/page.md").write_text(
        "```python\n"
        "def test_each_email_is_sent_once() -> None:\n"
        "    assert True\n"
        "async def test_an_async_sample() -> None: ...\n"
        "test_a_missing_behaviour()\n"
        "```\n"
        "Prose naming `test_each_email_is_sent_once` refers to the project's tests.\n"
    )
    # When the check runs over that repository
    stale = check_doc_paths.find_stale_references(tmp_path)
    # Then only the call and the prose name a missing test; the definitions are the sample's
    assert [str(ref) for ref in stale] == [
        "docs/page.md:5: test_a_missing_behaviour",
        "docs/page.md:7: test_each_email_is_sent_once",
    ]


def test_each_stale_path_test_tree_entry_make_target_or_readme_link_is_named(
    tmp_path: Path,
) -> None:
    # Given a repository whose docs name existing things and seven stale ones (one module
    # the package tree leaves out)
    (tmp_path / "tests/worker_runtime").mkdir(parents=True)
    (tmp_path / "tests/worker_runtime/test_kept.py").write_text(
        "def test_a_kept_behaviour() -> None:\n    pass\n"
    )
    (tmp_path / "worker_runtime").mkdir()
    (tmp_path / "worker_runtime/keys.py").write_text("")
    (tmp_path / "worker_runtime/unlisted.py").write_text("")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs/page.md").write_text(
        "The schema is `worker_runtime/keys.py`; see tests/worker_runtime/test_kept.py,\n"
        "`test_a_kept_behaviour` and the family `test_a_kept_`.\n"
        "Moved: `worker_runtime/old_keys.py` and\n"
        "```sh\npython -m pytest tests/worker_runtime/test_gone.py\n```\n"
        "Renamed: `test_a_vanished_behaviour`, placeholders `deploy/<name>.yaml` are fine.\n"
        "```\nworker_runtime/    the runtime\n  keys.py       the key schema\n"
        "  queue.py      the engine, long gone\n                continued description\n```\n"
    )
    (tmp_path / "README.md").write_text(
        "[the page](docs/page.md), [gone](docs/gone.md)\n"
        "Run `make demo`, then `CHAOS_JOBS=5 make chaos`; to make it quick, `make fast-demo`.\n"
        "```sh\nmake demo  # make the demo\n```\n"
    )
    (tmp_path / "Makefile").write_text("X := 1\ndemo: venv ## the demo\n\techo\nchaos:\n")

    # When the check runs over that repository
    stale = check_doc_paths.find_stale_references(tmp_path)

    # Then exactly the seven stale references are named, with their page and line
    assert [str(ref) for ref in stale] == [
        "docs/page.md:3: worker_runtime/old_keys.py",
        "docs/page.md:5: tests/worker_runtime/test_gone.py",
        "docs/page.md:7: test_a_vanished_behaviour",
        "docs/page.md:9: worker_runtime/unlisted.py (not in the package tree)",
        "docs/page.md:11: worker_runtime/queue.py",
        "README.md:1: docs/gone.md",
        "README.md:2: make fast-demo",
    ]
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts/check_doc_paths.py"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "stale reference: docs/page.md:3: worker_runtime/old_keys.py" in result.stderr
