"""What every `python -m patterns...` entry point shares: its parser, its logging, its exit code.

    parser = cli.Parser(prog="python -m patterns.tasks", description=...)
    roles = parser.roles()
    worker = roles.add_parser("worker", help="...")      # each role lists its own options
    ...
    cli.run(main(options), role="worker")

Exit codes mean what happened:

    0  done
    1  the work failed: a job incomplete, a request unanswered
    2  wrong usage or configuration: an unknown option, a malformed URL, a refused login
    3  a broker stayed unreachable (`--give-up-after`)

A wrong option or value is one line naming it, with the valid choices; an expected failure
(a broker down, a wrong password) is one sentence, never a traceback.
"""

import argparse
import logging
import sys
from collections.abc import Coroutine
from typing import Any, NoReturn

from patterns import config, processes
from patterns.clients import BrokerLost, Misconfigured

DONE, FAILED, MISCONFIGURED, UNREACHABLE = 0, 1, 2, 3


class Failed(RuntimeError):
    """The work did not succeed; the message says what is missing (exit code 1)."""


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (argparse prints the whole usage first)."""

    def error(self, message: str) -> NoReturn:
        self.exit(MISCONFIGURED, f"{self.prog}: {message}\n")

    def roles(self) -> argparse._SubParsersAction:
        """Subcommands, one per role, each with its own options; one of them is required."""
        return self.add_subparsers(dest="role", required=True, metavar="ROLE", parser_class=Parser)


def positive(text: str) -> float:
    """A number of seconds above 0; "inf" waits for ever."""
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds above 0, not {text!r}")
    return value


def add_give_up(parser: argparse.ArgumentParser) -> None:
    """`--give-up-after S`: how long to wait for a broker that does not answer."""
    parser.add_argument(
        "--give-up-after",
        type=positive,
        metavar="S",
        help="exit once a broker has been unreachable this long (default "
        f"{config.GIVE_UP_AFTER_S:g}, from PATTERNS_GIVE_UP_AFTER; inf: wait for ever)",
    )


def run(main: Coroutine[Any, Any, Any], role: str, give_up_after: float | None = None) -> NoReturn:
    """Run `main` (SIGTERM and Ctrl-C stop it cleanly) and exit with a code that says how
    it went; expected failures are one line on stderr."""
    logging.basicConfig(
        level=logging.INFO, format=f"%(asctime)s {role} %(levelname)s %(message)s", force=True
    )
    logging.getLogger("aiormq").setLevel(logging.CRITICAL)  # a lost connection: said once, by us
    if give_up_after is not None:
        config.GIVE_UP_AFTER_S = give_up_after
    try:
        processes.run(main)
    except Misconfigured as error:
        sys.exit(_said(error, MISCONFIGURED))
    except BrokerLost as error:
        sys.exit(_said(error, UNREACHABLE))
    except Failed as error:
        sys.exit(_said(error, FAILED))
    sys.exit(DONE)


def _said(error: Exception, code: int) -> int:
    print(f"{error}", file=sys.stderr, flush=True)
    return code
