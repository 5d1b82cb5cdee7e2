"""How a role says what happens to it, without knowing who listens.

Producers, workers, collectors, subscribers and repliers take an `on_event` callback and
call it with an event name and fields: `on_event("ready", name="w1")`,
`on_event("stats", rate=812.5)`, `on_event("result", **tally)`. A `python -m` entry point
passes `patterns.processes.report`, which tells the notebook that started it; anything
else that takes the same arguments works too (a test's list, a logger).
"""

import logging
from collections.abc import Callable

OnEvent = Callable[..., None]

log = logging.getLogger("patterns")


def log_event(event: str, **fields: object) -> None:
    """The default: a log line per event."""
    log.info("%s %s", event, fields)
