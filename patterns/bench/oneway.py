"""One-way messages: a receiver awaiting each message, one taking all that is ready, a raw loop.

For each transport (a ZeroMQ PUSH/PULL pair, a Redis list), a closed-loop run of one
sender process and one receiver process (`patterns.fundamentals.oneway`), three ways:

* idiomatic: `oneway`, an `await` per message, as the clients teach it;
* fast: `oneway_fast`, an `await` only when nothing is ready, then everything that is;
* raw: a plain blocking loop with the same client and no event loop (this module's
  `receive` role), taking what is ready as the fast one does.

Each receiver records every message's latency and ledger entry, the same work in all
three. Rounds alternate the three; the result is the median received/s of each, and the
ratios. Target: fast >= 1.5 x idiomatic, or `oneway_fast` has no place.
"""

import statistics
import time

import redis
import zmq

from patterns import cli, config, processes
from patterns.fundamentals import oneway
from patterns.measure import DeliveryLedger, LatencyRecorder, read_end, read_probe
from patterns.messages import MalformedMessage

IMPLS = ("idiomatic", "fast", "raw")
TARGET = 1.5
BATCH = 1_000


async def run(quick: bool) -> dict:
    return await compare(count=10_000 if quick else 50_000, rounds=2 if quick else 5)


async def compare(count: int, rounds: int) -> dict:
    """Received/s per transport and implementation, medians of alternating rounds."""
    result: dict = {"messages": count, "rounds": rounds, "target": TARGET}
    for transport in oneway.TRANSPORTS:
        rates: dict[str, list[float]] = {impl: [] for impl in IMPLS}
        for n in range(rounds):
            for impl in IMPLS[n % 3 :] + IMPLS[: n % 3]:  # a different one first each round
                received = await oneway.run(transport, count, impl=impl)
                assert received["ledger"]["lost"] == 0
                rates[impl].append(received["rate"])
        medians = {impl: statistics.median(values) for impl, values in rates.items()}
        result[transport] = {f"{impl}_per_s": round(rate) for impl, rate in medians.items()} | {
            "fast_ratio": round(medians["fast"] / medians["idiomatic"], 2),
            "raw_ratio": round(medians["raw"] / medians["idiomatic"], 2),
        }
    result["meets_target"] = all(result[t]["fast_ratio"] >= TARGET for t in oneway.TRANSPORTS)
    return result


# ---- the raw receiver: python -m patterns.bench.oneway receive ... ----------------------


def batches(transport: str, endpoint: str, ready: dict) -> object:
    if transport == "zmq":
        socket = zmq.Context.instance().socket(zmq.PULL)
        socket.linger = 0
        socket.bind(endpoint)
        ready["endpoint"] = socket.getsockopt_string(zmq.LAST_ENDPOINT)
        processes.report("ready", endpoint=ready["endpoint"])
        while True:
            batch = [socket.recv()]  # blocks for the first one
            try:
                while len(batch) < BATCH:
                    batch.append(socket.recv(zmq.NOBLOCK))
            except zmq.Again:
                pass
            yield batch
    else:
        client = redis.Redis.from_url(config.REDIS_URL)
        client.delete(endpoint)
        processes.report("ready", endpoint=endpoint)
        while True:
            if (popped := client.blpop([endpoint], timeout=1)) is not None:
                yield [popped[1], *(client.lpop(endpoint, BATCH - 1) or [])]


def receive(transport: str, endpoint: str) -> None:
    latency, ledger, sent, received, malformed = LatencyRecorder(), DeliveryLedger(), {}, 0, 0
    started = 0
    for batch in batches(transport, endpoint, {}):
        now_ns = time.perf_counter_ns()
        started = started or now_ns
        received += len(batch)
        for frame in batch:
            try:
                if (end := read_end(frame)) is not None:
                    sent[end[0]] = end[1]
                    continue
                producer, seq, sent_ns = read_probe(frame)
            except MalformedMessage:
                malformed += 1
                continue
            ledger.record(producer, seq)
            latency.record(sent_ns, now_ns)
        if sent:
            break
    seconds = max(1, time.perf_counter_ns() - started) / 1e9
    processes.report(
        "result",
        received=received - len(sent),
        rate=round(received / seconds),
        malformed=malformed,
        latency=vars(latency.summary()),
        ledger=vars(ledger.report(sent)),
    )


def main() -> None:
    parser = cli.Parser(prog="python -m patterns.bench.oneway", description="the raw receiver")
    role = parser.roles().add_parser("receive", help="receive with a plain blocking loop")
    role.add_argument("--transport", choices=oneway.TRANSPORTS, required=True)
    role.add_argument("--to", required=True, help="zmq: endpoint to bind; redis: list key")
    role.add_argument("--impl", choices=("raw",), default="raw")
    options = parser.parse_args()
    receive(options.transport, options.to)


if __name__ == "__main__":
    main()
