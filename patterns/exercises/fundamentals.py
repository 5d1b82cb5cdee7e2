"""The exercises of notebook 00 (messaging fundamentals), checked against the real Redis."""

import random
import uuid
from typing import Any

from patterns import clients
from patterns.exercises.checking import Wrong, exercise
from patterns.measure import DeliveryLedger


@exercise("00.1")
async def reliable_list_consumer(answer: Any) -> str:
    """Ten messages; the handler fails on the fourth, once: it must not be lost."""
    queue = f"exercise:{uuid.uuid4().hex[:8]}"
    processing = f"{queue}:processing"
    messages = [f"message {n}".encode() for n in range(10)]
    handled: list[bytes] = []
    failed: list[bytes] = []

    async def handle(message: bytes) -> None:
        if message == messages[3] and not failed:
            failed.append(message)
            raise RuntimeError("the handler failed (on purpose)")
        handled.append(message)

    async with clients.redis() as redis:
        try:
            await redis.rpush(queue, *messages)
            try:
                await answer(redis, queue, processing, handle)
            except RuntimeError as error:
                if not failed or str(error) != "the handler failed (on purpose)":
                    raise
            left = await redis.lrange(processing, 0, -1)
            queued = await redis.lrange(queue, 0, -1)
            if failed and messages[3] not in left and messages[3] not in queued:
                raise Wrong("the message whose handler failed is lost: it is in neither list")
            await answer(redis, queue, processing, handle)  # a restarted consumer finishes
            queued = await redis.lrange(queue, 0, -1)
            left_after = await redis.lrange(processing, 0, -1)
        finally:
            await redis.delete(queue, processing)
    if queued:
        raise Wrong(f"{len(queued)} messages are still in the queue: take them all")
    done = [m for m in messages if m in handled and m != messages[3]]
    if len(done) != 9:
        raise Wrong(f"{len(done)} of the 9 messages that did not fail were handled")
    if left_after != left:
        raise Wrong("a message handled successfully was left in the processing list: LREM it")
    return "every message handled, and the one whose handler failed kept in processing"


@exercise("00.2")
async def ledger_by_hand(answer: Any) -> str:
    rng = random.Random(13)
    for _ in range(300):
        sent = rng.randint(0, 40)
        arrivals = [n for n in range(sent) if rng.random() > 0.2]
        arrivals += rng.choices(range(max(sent, 1)), k=rng.randint(0, 5)) if sent else []
        if rng.random() < 0.5:
            rng.shuffle(arrivals)
        reference = DeliveryLedger()
        for seq in arrivals:
            reference.record("p", seq)
        expected = reference.report({"p": sent})
        want = (expected.lost, expected.duplicated, expected.out_of_order)
        got = tuple(answer(list(arrivals), sent))
        if got != want:
            raise Wrong(f"for arrivals {arrivals} of {sent} sent it says {got}, not {want}")
    return "(lost, duplicated, out of order) right on 300 random runs"
