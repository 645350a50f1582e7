"""The images scripts/build-images.sh builds, as the e2e tests see them.

`fetch_images` runs the script (it rebuilds only when an image's inputs changed) and returns
where each OCI archive is and its manifest digest. Used by tests/e2e/test_images.py (the images
match their Dockerfiles) and tests/e2e/kubenode.py (the real node imports them into containerd).
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "build-images.sh"
BUILD_TIMEOUT_SECONDS = 3600.0


class ImageBuildError(RuntimeError):
    """scripts/build-images.sh failed; the message carries its output."""


@dataclass(frozen=True)
class Image:
    """One built image: the script's name for it, its name in containerd, digest and archive."""

    key: str
    ref: str
    digest: str
    archive: Path


def fetch_images(*names: str) -> dict[str, Image]:
    """Build (or find cached) the named images; `script name of the image -> Image`."""
    result = subprocess.run(
        ["bash", str(SCRIPT), *names], capture_output=True, text=True, timeout=BUILD_TIMEOUT_SECONDS
    )
    if result.returncode != 0:
        raise ImageBuildError(
            f"{SCRIPT.name} {' '.join(names)} failed with {result.returncode}:\n"
            f"{result.stderr[-4000:]}"
        )
    images = {}
    for line in result.stdout.splitlines():
        word, key, ref, digest, archive = line.split()
        if word == "image":
            images[key] = Image(key, ref, digest, Path(archive))
    return images
