"""The `workerfleet` command line: one entry point for workers, the operator and local mode.

Installed as the `workerfleet` console script. Subcommands import their modules lazily so a
worker pod never loads kopf or the Kubernetes client.

Subcommands come in groups. A group is a function that adds its subparsers to the shared
``argparse`` subparsers object; every subparser sets ``handler=`` (a function taking the parsed
namespace and returning the exit code) through ``set_defaults``. Registering a group must stay
cheap: import heavy modules inside the handlers, never at registration. To add a group (the
operator, ``run``, ``demo``), append its registrar to :data:`COMMAND_GROUPS`.

Shell completion is argcomplete's: ``workerfleet completion bash|zsh|fish`` prints the shell
code, which runs ``workerfleet`` with ``_ARGCOMPLETE`` set; :func:`main` then answers from the
same parser (so every registered command and flag completes) and exits before parsing.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

# Light (argparse and the standard library; worker_runtime resolves its names lazily): imported
# before main() runs, so it must stay cheap.
from worker_runtime import cli as runtime_cli

SubParsers = Any  # argparse's _SubParsersAction is private; registrars only call add_parser().
CommandGroup = Callable[[SubParsers], None]


def _register_runtime_commands(subparsers: SubParsers) -> None:
    # `worker`, `queue stats`, `dlq ...`, `enqueue`: the runtime's own commands.
    runtime_cli.register_commands(subparsers)


def _register_local_commands(subparsers: SubParsers) -> None:
    # `run` (and later `demo`): the local fleet; its handlers import the heavy parts.
    from workerfleet_operator.local import cli as local_cli

    local_cli.register_commands(subparsers)


def _register_operator_commands(subparsers: SubParsers) -> None:
    # `operator`: the Kubernetes operator; kopf is imported only when it runs.
    from workerfleet_operator.shell import cli as operator_cli

    operator_cli.register_commands(subparsers)


def _register_pools_commands(subparsers: SubParsers) -> None:
    # `pools`, and `--pool NAMESPACE/NAME` of the queue/dlq commands: the cluster's WorkerPools.
    from workerfleet_operator.shell import pools_cli

    pools_cli.register_commands(subparsers)
    runtime_cli.POOL_RESOLVER = pools_cli.resolve_pool


def _register_console_commands(subparsers: SubParsers) -> None:
    # `console`: the web console; Starlette and uvicorn are imported only when it runs.
    from workerfleet_operator.console import cli as console_cli

    console_cli.register_commands(subparsers)


COMPLETION_SHELLS = ("bash", "zsh", "fish")


def _register_completion_command(subparsers: SubParsers) -> None:
    # `completion SHELL`: argcomplete's shell code for `workerfleet`.
    c = subparsers.add_parser(
        "completion",
        help="print shell completion code (bash, zsh, fish)",
        description="Print the code that makes SHELL complete workerfleet's commands and flags. "
        'bash: eval "$(workerfleet completion bash)" in ~/.bashrc; zsh: the same with zsh in '
        "~/.zshrc; fish: workerfleet completion fish | source.",
    )
    c.add_argument("shell", choices=COMPLETION_SHELLS, help="the shell to complete in")
    c.set_defaults(handler=cmd_completion)


def cmd_completion(args: argparse.Namespace) -> int:
    """Print argcomplete's completion code for ``workerfleet`` in ``args.shell``."""
    from argcomplete import shell_integration

    sys.stdout.write(shell_integration.shellcode(["workerfleet"], shell=args.shell))
    return 0


COMMAND_GROUPS: list[CommandGroup] = [
    _register_runtime_commands,
    _register_local_commands,
    _register_operator_commands,
    _register_pools_commands,
    _register_console_commands,
    _register_completion_command,
]


def _installed_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("workerfleet")
    except metadata.PackageNotFoundError:  # a source tree without an install
        return "unknown"


def build_parser(groups: list[CommandGroup] | None = None) -> argparse.ArgumentParser:
    """The full parser with every registered command group."""
    parser = argparse.ArgumentParser(
        prog="workerfleet",
        description=(
            "Background-job workers on Redis, RabbitMQ or SQS, scaled by a Kubernetes operator."
        ),
    )
    parser.add_argument(
        "--version", action="version", version=f"workerfleet {_installed_version()}"
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for register in COMMAND_GROUPS if groups is None else groups:
        register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line and return its exit code; Ctrl-C ends it with one line and 130."""
    # Building the parser imports every command group (pydantic, the Kubernetes client's
    # settings), and a handler imports its own modules before it takes Ctrl-C itself.
    return runtime_cli.run_interruptible(lambda: _run(argv))


def _run(argv: list[str] | None) -> int:
    parser = build_parser()
    if "_ARGCOMPLETE" in os.environ:
        # A shell asks for completions: argcomplete answers and exits (imported only then).
        import argcomplete

        argcomplete.autocomplete(parser)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return 2
    result = handler(args)
    return int(result or 0)
