"""A child process for the tests of patterns.processes: `python -m tests.child BEHAVIOUR`."""

import asyncio
import os
import subprocess
import sys

from patterns import processes


async def main(behaviour: str) -> None:
    if behaviour == "fail":
        sys.exit("cannot start: the port is taken (a made-up reason)")
    if behaviour == "silent":  # never reports ready
        await asyncio.Event().wait()
    grandchild = None
    if behaviour == "with-grandchild":
        grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    processes.report("ready", pid=os.getpid(), grandchild=grandchild and grandchild.pid)
    if behaviour == "busy":  # CPU-bound on the event loop: a SIGTERM handler never runs
        while True:
            pass
    for n in range(3):
        processes.report("stats", n=n)
    processes.report("result", total=3)
    if behaviour == "exit":
        return
    try:
        await asyncio.Event().wait()
    finally:
        print("stopping cleanly", flush=True)


if __name__ == "__main__":
    processes.run(main(sys.argv[1]))
