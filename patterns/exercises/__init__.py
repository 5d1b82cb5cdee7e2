"""The notebooks' exercises: a checker for each, run against the real brokers.

Each notebook ends with two or three exercises: a stub to fill in, then
`await check("NN.k", answer)`, which says in one sentence what is wrong or that the answer
works. The solutions are notebooks of their own, in `notebooks/solutions/`.
"""

from patterns.exercises import compare, fundamentals, pubsub, reqrep, tasks  # noqa: F401 (registers their checkers)
from patterns.exercises.checking import Verdict, Wrong, check

__all__ = ["Verdict", "Wrong", "check"]
