import asyncio
import subprocess
import sys
import textwrap

import pytest

from patterns import processes
from patterns.processes import ChildFailed
from tests.conftest import alive


async def test_start_waits_for_ready_and_the_child_reports(reap) -> None:
    child = await processes.start("tests.child", "run")
    reap.append(child.pid)
    assert child.ready["pid"] == child.pid
    assert [(await child.next_report())["n"] for _ in range(3)] == [0, 1, 2]
    assert (await child.next_report("result"))["total"] == 3
    assert child.command == "python -m tests.child run"
    assert await child.stop() == 0  # SIGTERM is a clean exit: `finally` ran
    assert "stopping cleanly" in child.log()
    assert not alive(child.pid)


async def test_a_child_that_fails_to_start_shows_its_stderr() -> None:
    with pytest.raises(ChildFailed, match="exited with code 1 before reporting ready") as error:
        await processes.start("tests.child", "fail")
    assert "the port is taken" in str(error.value)


async def test_a_module_that_does_not_exist_fails_clearly() -> None:
    with pytest.raises(ChildFailed, match=r"No module named 'tests\.nothing'"):
        await processes.start("tests.nothing")


async def test_a_child_that_never_gets_ready_is_stopped_after_the_timeout() -> None:
    with pytest.raises(ChildFailed, match=r"was not ready within 0\.5 s"):
        await processes.start("tests.child", "silent", timeout=0.5)
    assert not processes._living


async def test_stop_takes_the_whole_process_group(reap) -> None:
    child = await processes.start("tests.child", "with-grandchild")
    reap += [child.pid, child.ready["grandchild"]]
    assert alive(child.ready["grandchild"])
    await child.stop()
    await asyncio.sleep(0.1)  # the grandchild is reparented to init, which reaps it
    assert not alive(child.ready["grandchild"])


async def test_kill_is_a_kill_dash_nine(reap) -> None:
    child = await processes.start("tests.child", "run")
    reap.append(child.pid)
    child.kill()
    assert await child.wait(timeout=5) == -9
    assert "stopping cleanly" not in child.log()


async def test_reports_end_when_the_child_exits() -> None:
    child = await processes.start("tests.child", "exit")
    events = [report["event"] async for report in child.reports()]
    assert events == ["stats", "stats", "stats", "result"]
    assert await child.wait(timeout=5) == 0
    with pytest.raises(ChildFailed, match="exited with code 0 before reporting result"):
        await child.next_report("result")


async def test_children_scope_stops_them_even_on_an_error(reap) -> None:
    with pytest.raises(RuntimeError, match="boom"):
        async with processes.children() as started:
            started.append(await processes.start("tests.child", "run"))
            reap.append(started[0].pid)
            raise RuntimeError("boom")
    assert not alive(started[0].pid)


PARENT = textwrap.dedent(
    """
    import asyncio, os, sys
    from patterns import processes
    async def main():
        child = await processes.start("tests.child", sys.argv[2])
        print(child.pid, child.ready["grandchild"] or 0, flush=True)
        if sys.argv[1] == "die":
            os.kill(os.getpid(), 9)   # no atexit, no finally: only the death signal is left
    asyncio.run(main())
    """
)


@pytest.mark.parametrize(
    ("how", "behaviour"), [("exit", "with-grandchild"), ("die", "with-grandchild"), ("die", "busy")]
)
async def test_children_do_not_outlive_their_parent(how: str, behaviour: str, reap) -> None:
    parent = subprocess.run(
        [sys.executable, "-c", PARENT, how, behaviour], capture_output=True, text=True, timeout=60
    )
    child, grandchild = map(int, parent.stdout.split())
    reap += [pid for pid in (child, grandchild) if pid]  # 0 would mean our own group
    for _ in range(100):
        if not alive(child):
            break
        await asyncio.sleep(0.05)
    assert not alive(child)
    if how == "exit":  # atexit stops the whole group
        await asyncio.sleep(0.1)
        assert not alive(grandchild)


async def test_together_fails_at_once_when_one_fails(reap) -> None:
    child = await processes.start("tests.child", "run")
    reap.append(child.pid)

    async def dies() -> None:
        raise ChildFailed("the sender died")

    with pytest.raises(ChildFailed, match="the sender died"):
        await asyncio.wait_for(processes.together(child.next_report("never"), dies()), 5)
    await child.stop()
