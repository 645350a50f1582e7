"""Child commands of the local fleet are tied to the fleet's life where the OS allows it."""

from __future__ import annotations

import sys

from workerfleet_operator.local import lifeline


def test_a_child_command_is_prefixed_to_get_sigterm_when_its_parent_dies() -> None:
    command = lifeline.build_tied_command(["redis-server", "--port", "1"], setpriv="/x/setpriv")
    if sys.platform.startswith("linux"):
        assert command == ["/x/setpriv", "--pdeathsig", "TERM", "--", "redis-server", "--port", "1"]
    else:
        assert command == ["redis-server", "--port", "1"]


def test_without_setpriv_the_command_runs_unchanged() -> None:
    assert lifeline.build_tied_command(["redis-server"], setpriv="") == ["redis-server"]
