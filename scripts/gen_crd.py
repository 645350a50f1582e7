"""Write deploy/crds/workerpools.workerfleet.io.yaml from the WorkerPool pydantic models.

Called by ``make crd``. The CRD is generated, never edited by hand: the models in
``operator/workerfleet_operator/api/`` are the single source of truth, and
``tests/workerfleet_operator/test_crd_drift.py`` fails when this file is stale.
Usage: ``python scripts/gen_crd.py [--check]`` (``--check`` exits 1 instead of writing).
"""

from __future__ import annotations

import sys
from pathlib import Path

from workerfleet_operator.api import crd

TARGET = Path(__file__).resolve().parent.parent / "deploy" / "crds" / f"{crd.CRD_NAME}.yaml"


def main(argv: list[str]) -> int:
    text = crd.build_crd_yaml()
    current = TARGET.read_text() if TARGET.exists() else None
    if "--check" in argv:
        if current != text:
            print(f"{TARGET} is stale: run `make crd`", file=sys.stderr)
            return 1
        return 0
    if current != text:
        TARGET.parent.mkdir(parents=True, exist_ok=True)
        TARGET.write_text(text)
        print(f"wrote {TARGET}")
    else:
        print(f"{TARGET} is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
