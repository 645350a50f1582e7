"""``$KUBECONFIG`` listing several files is read the way kubectl reads it: the files are merged,
the first to name a cluster, user or context wins, the current context is the first one a file
sets, and a ``$KUBECONFIG`` naming no file that exists never falls back to ~/.kube/config's
cluster. (Only the first listed file was read before: a current context defined in a second
file was not found.)"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from workerfleet_operator.shell import credentials


def write_kubeconfig(
    path: Path,
    *,
    clusters: dict[str, str] | None = None,
    contexts: dict[str, str] | None = None,
    current: str | None = None,
) -> Path:
    """A kubeconfig whose context NAME uses cluster CLUSTER and the user of the same name."""
    clusters = clusters or {}
    contexts = contexts or {}
    body: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": n, "cluster": {"server": s}} for n, s in clusters.items()],
        "users": [{"name": c, "user": {"token": f"token-of-{path.name}"}} for c in clusters],
        "contexts": [
            {"name": n, "context": {"cluster": c, "user": c}} for n, c in contexts.items()
        ],
    }
    if current is not None:
        body["current-context"] = current
    path.write_text(json.dumps(body))
    return path


def login_with(environ: dict[str, str], tmp_path: Path) -> Any:
    return credentials.load_login(None, environ, str(tmp_path / "no-service-account"))


def listing(*paths: Path) -> dict[str, str]:
    return {"KUBECONFIG": os.pathsep.join(str(p) for p in paths)}


def test_a_current_context_defined_in_the_second_file_is_found(tmp_path: Path) -> None:
    # Given a first kubeconfig that only says which context is current
    first = write_kubeconfig(tmp_path / "config", current="prod")
    # And a second that defines that context and its cluster
    second = write_kubeconfig(
        tmp_path / "prod.yaml",
        clusters={"prod-cluster": "https://10.0.0.2:6443"},
        contexts={"prod": "prod-cluster"},
    )
    # When the login is loaded with both listed in KUBECONFIG
    info = login_with(listing(first, second), tmp_path)
    # Then it is the second file's cluster, with its user's token
    assert info.server == "https://10.0.0.2:6443"
    assert info.token == "token-of-prod.yaml"


def test_the_first_file_that_sets_a_current_context_wins(tmp_path: Path) -> None:
    # Given two kubeconfigs that each set their own context as current
    first = write_kubeconfig(
        tmp_path / "a.yaml",
        clusters={"a": "https://10.0.0.1:6443"},
        contexts={"a": "a"},
        current="a",
    )
    second = write_kubeconfig(
        tmp_path / "b.yaml",
        clusters={"b": "https://10.0.0.2:6443"},
        contexts={"b": "b"},
        current="b",
    )
    # When both are listed, first then second
    info = login_with(listing(first, second), tmp_path)
    # Then the first file's current context is used, as kubectl would
    assert info.server == "https://10.0.0.1:6443"


def test_a_later_file_sets_the_current_context_when_the_first_sets_none(tmp_path: Path) -> None:
    first = write_kubeconfig(
        tmp_path / "a.yaml", clusters={"a": "https://10.0.0.1:6443"}, contexts={"a": "a"}
    )
    second = write_kubeconfig(tmp_path / "b.yaml", current="a")
    info = login_with(listing(first, second), tmp_path)
    assert info.server == "https://10.0.0.1:6443"


def test_the_first_file_to_name_a_cluster_wins(tmp_path: Path) -> None:
    # Given two files that both define the cluster "shared" with different servers
    first = write_kubeconfig(
        tmp_path / "a.yaml",
        clusters={"shared": "https://10.0.0.1:6443"},
        contexts={"x": "shared"},
        current="x",
    )
    second = write_kubeconfig(tmp_path / "b.yaml", clusters={"shared": "https://10.0.0.9:6443"})
    # When both are listed
    info = login_with(listing(first, second), tmp_path)
    # Then the first file's definition is the one used
    assert info.server == "https://10.0.0.1:6443"


def test_files_listed_that_do_not_exist_are_skipped(tmp_path: Path) -> None:
    present = write_kubeconfig(
        tmp_path / "a.yaml",
        clusters={"a": "https://10.0.0.1:6443"},
        contexts={"a": "a"},
        current="a",
    )
    info = login_with(listing(tmp_path / "absent.yaml", present), tmp_path)
    assert info.server == "https://10.0.0.1:6443"


def test_a_kubeconfig_variable_naming_no_file_never_falls_back_to_the_home_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a ~/.kube/config for some cluster
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".kube").mkdir()
    write_kubeconfig(
        tmp_path / ".kube" / "config",
        clusters={"home": "https://10.0.0.7:6443"},
        contexts={"home": "home"},
        current="home",
    )
    # When KUBECONFIG names only a file that does not exist (a typo)
    environ = listing(tmp_path / "prod-kubeconfgi.yaml")
    # Then the login is refused with a message naming KUBECONFIG, never the home config's cluster
    with pytest.raises(credentials.CredentialsError) as refused:
        login_with(environ, tmp_path)
    message = str(refused.value)
    assert "KUBECONFIG names no file that exists" in message
    assert str(tmp_path / "prod-kubeconfgi.yaml") in message
    assert "pass --kubeconfig" in message


def test_without_kubeconfig_the_home_config_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".kube").mkdir()
    home = write_kubeconfig(
        tmp_path / ".kube" / "config",
        clusters={"home": "https://10.0.0.7:6443"},
        contexts={"home": "home"},
        current="home",
    )
    assert credentials.find_kubeconfig(None, {}) == str(home)
    assert login_with({}, tmp_path).server == "https://10.0.0.7:6443"
