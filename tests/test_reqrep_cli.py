"""`python -m patterns.reqrep ROLE`: options per role, exit codes that say what happened, and
one sentence (never a traceback) for what the user got wrong."""

import os
import subprocess
import sys

import pytest

from patterns import config, processes

FAILED, MISCONFIGURED, UNREACHABLE = 1, 2, 3


def reqrep(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "patterns.reqrep", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=os.environ | (env or {}),
    )


def said(run: subprocess.CompletedProcess) -> str:
    """The last line on stderr: the one sentence a failure ends with."""
    assert "Traceback" not in run.stderr, run.stderr
    return run.stderr.strip().splitlines()[-1]


def test_each_role_lists_only_its_own_options() -> None:
    replier, requester, load = (
        reqrep(role, "--help").stdout for role in ("replier", "requester", "load")
    )
    assert "--prefetch" in replier and "--rates" not in replier and "--timeout" not in replier
    assert "--timeout" in requester and "--prefetch" not in requester and "--rates" not in requester
    assert "--rates" in load and "--prefetch" not in load


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["requester", "not json"], "argument requests: must be JSON, not 'not json'"),
        (["replier", "--transport", "pigeon"], "invalid choice: 'pigeon'"),
        (["load", "--rates", "100,fast"], "must be requests/s above 0"),
        (["requester", "--timeout", "0"], "must be a number of seconds above 0"),
    ],
)
def test_a_usage_error_is_one_line(args: list[str], complaint: str) -> None:
    run = reqrep(*args)
    assert run.returncode == MISCONFIGURED
    assert run.stderr.count("\n") == 1 and complaint in run.stderr


def test_the_requester_exits_with_1_when_a_request_fails() -> None:
    run = reqrep("requester", "--transport", "pipe", '{"a": "one", "b": 2}', '{"a": 1, "b": 2}')
    assert run.returncode == FAILED
    assert run.stdout.splitlines()[-1] == "Reply: 1 + 2 = 3"
    assert said(run).startswith("1 of 2 requests failed; the replier refused request")


def test_the_requester_with_nobody_listening_says_so() -> None:
    endpoint = f"tcp://127.0.0.1:{processes.free_port()}"
    run = reqrep("requester", "--transport", "zmq", "--to", endpoint, "--timeout", "0.5")
    assert run.returncode == FAILED
    assert said(run).startswith("2 of 2 requests failed; no reply to request")
    assert said(run).endswith("within 0.5 s: no replier was connected")


CLOSED_PORT = processes.free_port()


WRONG_URLS = {
    "malformed": ("AMQP_URL", "amqp//guest@127.0.0.1", MISCONFIGURED, "is not a valid URL"),
    "wrong password": (
        "AMQP_URL",
        "amqp://guest:wrong@127.0.0.1:5672/",
        MISCONFIGURED,
        "refused the login",
    ),
    "closed port": (
        "AMQP_URL",
        f"amqp://guest:guest@127.0.0.1:{CLOSED_PORT}/",
        UNREACHABLE,
        "was unreachable for",
    ),
    "no database": ("REDIS_URL", "redis://127.0.0.1:6379/x", MISCONFIGURED, "database number"),
    "wrong user": (
        "REDIS_URL",
        "redis://nobody:wrong@127.0.0.1:6379/0",
        MISCONFIGURED,
        "refused the login",
    ),
    "redis closed port": (
        "REDIS_URL",
        f"redis://127.0.0.1:{CLOSED_PORT}/0",
        UNREACHABLE,
        "was unreachable for",
    ),
}


@pytest.mark.parametrize(
    ("role", "case"),
    [("requester", case) for case in WRONG_URLS]
    + [("replier", "wrong password"), ("replier", "redis closed port")],
)
def test_a_wrong_broker_url_is_one_sentence(role: str, case: str) -> None:
    variable, url, code, sentence = WRONG_URLS[case]
    transport = "amqp" if variable == "AMQP_URL" else "redis"
    run = reqrep(role, "--transport", transport, "--give-up-after", "1", env={variable: url})
    assert run.returncode == code
    assert sentence in said(run) and config.redacted(url) in said(run)
