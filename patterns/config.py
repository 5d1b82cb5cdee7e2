"""Where the brokers are, and how big a run is.

Everything comes from the environment, so the same notebook runs against the brokers on
this machine, in `compose.yaml`, or anywhere else a reader points it:

    REDIS_URL       default redis://127.0.0.1:6379/0
    AMQP_URL        default amqp://guest:guest@127.0.0.1:5672/
    PATTERNS_SCALE  "full" (a reader's run) or "small" (the test suite's run)
    PATTERNS_GIVE_UP_AFTER  seconds a process waits for a broker that does not answer
                    before it exits (default 60; "inf": for ever)
"""

import os
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

T = TypeVar("T")

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
AMQP_URL = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")

GIVE_UP_AFTER_S = float(os.environ.get("PATTERNS_GIVE_UP_AFTER", "60"))

SCALES = ("full", "small")
SCALE = os.environ.get("PATTERNS_SCALE", "full")
if SCALE not in SCALES:
    raise ValueError(f"PATTERNS_SCALE is {SCALE!r}; it must be one of {', '.join(SCALES)}")


def scaled(full: T, small: T) -> T:
    """The run size for this scale: `full` for a reader, `small` for the test suite."""
    return small if SCALE == "small" else full


def redacted(url: str) -> str:
    """The URL with its password masked, fit to print."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))
