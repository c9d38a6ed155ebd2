"""The `tiered` command line: argument parsing and dispatch only.

Each subcommand lives in the module that owns its work and is imported lazily, so `tiered render` does not
pay for the router or Ray imports. User errors exit with code 2 and a one-line message, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# subcommand → ("module:function", help). Each function takes the parsed argparse.Namespace and returns
# an exit code; its module also exposes `add_arguments(parser)`.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "router": ("tiered_router.server:router", "Serve the OpenAI-compatible router"),
    "render": ("tiered_operator.cli.commands:render", "Print what the operator would create for the objects in FILE"),
    "plan": ("tiered_operator.cli.commands:plan", "Print the capacity plan of the InferenceTiers in FILE"),
    "operator": ("tiered_operator.controller.handlers:operator", "Run the operator (kopf) on the current kubeconfig"),
    "cluster": ("tiered_devstack.emulator.cli:cluster", "Start a local Kubernetes API emulator"),
    "demo": ("tiered_devstack.demo:demo", "Run the whole stack on this machine: models, operator, router, burst"),
    "simulate": (
        "tiered_operator.cli.simulate:simulate",
        "Replay a utilization trace through the scaling and burst decisions",
    ),
    "report": (
        "tiered_operator.cli.report:report",
        "Print cost, baseline and savings by tier, team and feature from a router or Prometheus",
    ),
}


# Top-level modules that come with an extra rather than with `pip install tiered`: module → extra.
EXTRA_MODULES = {"tiered_devstack": "devstack", "kmock": "devstack"}


class UsageError(Exception):
    """A problem with the user's input: printed as one line, exit code 2."""


def build_parser(command: str | None) -> argparse.ArgumentParser:
    """The parser; only `command`'s module is imported (startup stays fast)."""
    parser = argparse.ArgumentParser(prog="tiered", description="Tiered LLM inference on Kubernetes.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (target, help_text) in SUBCOMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            module_name, _, func = target.partition(":")
            module = importlib.import_module(module_name)
            getattr(module, f"add_{func}_arguments")(sub_parser)
            sub_parser.set_defaults(_handler=getattr(module, func))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    try:
        parser = build_parser(command)
    except ModuleNotFoundError as error:
        extra = EXTRA_MODULES.get((error.name or "").partition(".")[0])
        if extra is None:
            raise
        print(f"tiered {command}: needs the {extra} extra: pip install 'tiered[{extra}]'", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    try:
        return int(args._handler(args) or 0)
    except UsageError as error:
        print(f"tiered {args.command}: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


