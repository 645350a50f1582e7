"""The images `make images` builds without a container engine are the ones the Dockerfiles describe.

scripts/build-images.sh writes OCI archives (cached by their inputs); these tests open them and
compare each image's config with the final stage of its Dockerfile: the exec-form entrypoint and
command, the numeric non-root user, the environment, the working directory and the ports. Also
checked: the user has a passwd entry (kopf asks for its name), and a second run builds nothing.
That the images really run, on a real kubelet, is tests/e2e/test_real_node.py.
"""

from __future__ import annotations

import json
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest

from tests.e2e import oci_images
from tests.packaging import packaging_support

pytestmark = pytest.mark.e2e

DOCKERFILES = {
    "workerfleet-operator": oci_images.REPO / "operator" / "Dockerfile",
    "email-worker": oci_images.REPO / "examples" / "worker-image" / "Dockerfile",
}
SCRIPT_NAMES = {"workerfleet-operator": "operator", "email-worker": "worker"}


@pytest.fixture(scope="module")
def images() -> dict[str, oci_images.Image]:
    try:
        return oci_images.fetch_images("operator", "worker")
    except oci_images.ImageBuildError as error:
        pytest.fail(f"{error}\n(`make images` installs what it needs first)", pytrace=False)


def read_blob(archive: Path, digest: str) -> Any:
    with tarfile.open(archive) as tar:
        member = tar.extractfile(f"./blobs/{digest.replace(':', '/')}")
        assert member is not None
        return json.load(member)


def read_config(image: oci_images.Image) -> dict[str, Any]:
    manifest = read_blob(image.archive, image.digest)
    config: dict[str, Any] = read_blob(image.archive, manifest["config"]["digest"])["config"]
    return config


def read_file(archive: Path, digest: str, path: str) -> str:
    """A file's text from the image's layers (the last layer holding it wins)."""
    manifest = read_blob(archive, digest)
    found = ""
    with tarfile.open(archive) as outer:
        for layer in manifest["layers"]:
            blob = outer.extractfile(f"./blobs/{layer['digest'].replace(':', '/')}")
            assert blob is not None
            with tarfile.open(fileobj=blob, mode="r:*") as inner:
                for member in inner:
                    if member.name.lstrip("./") == path.lstrip("/") and member.isfile():
                        data = inner.extractfile(member)
                        assert data is not None
                        found = data.read().decode()
    return found


def read_dockerfile_env(path: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for word, args in packaging_support.read_final_stage(path):
        if word == "ENV":
            for pair in args.split():
                key, _, value = pair.partition("=")
                env[key] = value
    return env


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_the_built_image_has_the_dockerfiles_entrypoint_user_env_and_ports(
    images: dict[str, oci_images.Image], name: str
) -> None:
    # Given the image built by scripts/build-images.sh and the Dockerfile describing it
    config = read_config(images[name])
    stage = packaging_support.read_final_stage(DOCKERFILES[name])
    steps = dict(stage)
    # Then entrypoint and command are the same exec-form arrays
    assert config["Entrypoint"] == json.loads(steps["ENTRYPOINT"])
    assert config.get("Cmd") == (json.loads(steps["CMD"]) if "CMD" in steps else None)
    # And the same numeric non-root user
    assert config["User"] == steps["USER"] == "10001:10001"
    # And the same environment (PATH: the same virtualenv first, then the system's)
    env = dict(item.split("=", 1) for item in config["Env"])
    for key, value in read_dockerfile_env(DOCKERFILES[name]).items():
        if key == "PATH":
            assert env["PATH"].split(":")[0] == value.split(":")[0]
        else:
            assert env[key] == value, key
    # And the same working directory and ports
    assert config.get("WorkingDir", "") == steps.get("WORKDIR", "")
    exposed = {f"{port}/tcp" for word, a in stage if word == "EXPOSE" for port in a.split()}
    assert set(config.get("ExposedPorts", {})) == exposed


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_the_images_user_10001_has_a_passwd_entry(
    images: dict[str, oci_images.Image], name: str
) -> None:
    # kopf's identity comes from getpass.getuser(), which raises for a uid without an entry
    passwd = read_file(images[name].archive, images[name].digest, "etc/passwd")
    assert any(line.split(":")[2] == "10001" for line in passwd.splitlines() if line)


def test_a_second_build_with_unchanged_inputs_builds_nothing(
    images: dict[str, oci_images.Image],
) -> None:
    # Given both images built (the fixture)
    # When the script runs again on the same tree
    result = subprocess.run(
        ["bash", str(oci_images.SCRIPT), "operator", "worker"],
        capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    # Then both come from the cache, with the same digests, and dist/ holds them
    for name, image in images.items():
        assert f"images: {name} (cached)" in result.stderr
        assert image.digest in result.stdout
        digest_file = oci_images.REPO / "dist" / f"{name}.digest"
        assert digest_file.read_text().strip() == image.digest
        assert (oci_images.REPO / "dist" / f"{name}.tar").stat().st_size > 0
