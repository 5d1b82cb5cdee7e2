"""Checking a learner's answer: run it against the real brokers, say in one sentence what
is wrong, or that it works.

    async def answer(...):
        raise NotImplementedError  # your code here

    await check("07.1", answer)

A checker is an async function registered for an exercise (`@exercise("07.1")`): it runs
the answer on a real job, queue or stream of its own, raises `Wrong("one sentence")` for
the first thing that is not right, and returns what it saw when all is right. `check`
prints the verdict (and keeps it in `verdicts`): it never raises, so a notebook runs top to
bottom with its exercises still to do.
"""

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

Checker = Callable[[Any], Awaitable[str]]
CHECKERS: dict[str, Checker] = {}
TIMEOUT_S = 60.0
verdicts: list["Verdict"] = []  # every verdict given in this process, in order


class Wrong(AssertionError):
    """What is wrong with an answer, in one sentence."""


@dataclass(frozen=True)
class Verdict:
    exercise: str
    passed: bool
    said: str

    def __str__(self) -> str:
        return f"{'Passed' if self.passed else 'Not yet'} ({self.exercise}): {self.said}"


def exercise(exercise_id: str) -> Callable[[Checker], Checker]:
    """Register a checker for an exercise."""

    def register(checker: Checker) -> Checker:
        CHECKERS[exercise_id] = checker
        return checker

    return register


async def check(exercise_id: str, answer: Any, timeout: float = TIMEOUT_S) -> None:
    """Run `answer` through the exercise's checker; print the verdict."""
    checker = CHECKERS[exercise_id]
    try:
        async with asyncio.timeout(timeout):
            verdict = Verdict(exercise_id, True, await checker(answer))
    except NotImplementedError:
        verdict = Verdict(exercise_id, False, "the stub still raises NotImplementedError")
    except Wrong as wrong:
        verdict = Verdict(exercise_id, False, str(wrong))
    except TimeoutError:
        verdict = Verdict(exercise_id, False, f"it did not finish within {timeout:g} s")
    except Exception as error:
        verdict = Verdict(exercise_id, False, f"it raised {type(error).__name__}: {error}")
    verdicts.append(verdict)
    print(verdict)
