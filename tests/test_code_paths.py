"""Every repository path a comment or docstring of the code names exists.

The check is the docs' one (scripts/check_doc_paths.py, ``find_stale_code_references``) run over
the prose of the Python sources: a module moved or a test renamed leaves no comment pointing at
the old place.
"""

from __future__ import annotations

from pathlib import Path

from scripts import check_doc_paths

REPO = Path(__file__).resolve().parents[1]


def test_every_repository_path_a_comment_or_docstring_names_exists() -> None:
    stale = check_doc_paths.find_stale_code_references(REPO)

    assert [str(ref) for ref in stale] == []


def test_a_stale_path_in_a_comment_or_a_docstring_is_named_and_code_strings_are_not(
    tmp_path: Path,
) -> None:
    # Given code whose prose names one existing path and three missing ones, and whose code
    # (not prose) holds a missing path in a string
    (tmp_path / "worker_runtime/brokers").mkdir(parents=True)
    (tmp_path / "worker_runtime/brokers/base.py").write_text("")
    (tmp_path / "tests").mkdir()
    (tmp_path / "worker_runtime/mod.py").write_text(
        '"""Reads worker_runtime/brokers/base.py; the old worker_runtime/queue.py is gone."""\n'
        "\n"
        "PLANTED = 'worker_runtime/in_a_string.py'\n"
        "\n"
        "\n"
        "def f() -> None:\n"
        '    """See tests/test_gone.py\'s fixture."""\n'
        "    # moved from worker_runtime/keys.py\n"
    )

    # When the check runs over that repository
    stale = check_doc_paths.find_stale_code_references(tmp_path)

    # Then exactly the three stale ones are named, with their file and line
    assert [str(ref) for ref in stale] == [
        "worker_runtime/mod.py:8: worker_runtime/keys.py",
        "worker_runtime/mod.py:1: worker_runtime/queue.py",
        "worker_runtime/mod.py:7: tests/test_gone.py",
    ]
