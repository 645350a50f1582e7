"""docs/runtime.md's "Testing your tasks" sample runs as written: the page's python block that
uses ``run_burst`` is written to a file of its own and run under pytest in a child process, as
an application's test suite would run it (memory broker, no server)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

RUNTIME_DOC = Path(__file__).resolve().parents[2] / "docs" / "runtime.md"


def read_testing_sample() -> str:
    """The python block of docs/runtime.md that imports run_burst."""
    blocks = re.findall(r"```python\n(.*?)```", RUNTIME_DOC.read_text(), re.DOTALL)
    samples = [b for b in blocks if "from worker_runtime.testing import run_burst" in b]
    assert len(samples) == 1, "the page should hold exactly one run_burst sample"
    return samples[0]


def test_the_testing_sample_of_the_runtime_docs_passes_under_pytest(tmp_path: Path) -> None:
    # Given the page's sample as an application's test file
    (tmp_path / "test_emails.py").write_text(read_testing_sample())
    # When pytest runs it in a process of its own
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_emails.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    # Then its one test passes
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed" in done.stdout
