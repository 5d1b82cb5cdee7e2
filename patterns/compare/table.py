"""The decision table, computed from the results of `load.under_load` and
`faults.under_faults`; nothing in it is typed by hand but the names (and, where
`replay.late_readers` did not run, the replay column's words for what each transport keeps).

    figures = table.figures(load_results, fault_results)   # numbers, one dict per transport
    rows = table.rows(figures)                             # the same, as table cells
    advice = table.choose_when(figures)                    # "choose X when ..." sentences
"""

from typing import Any

ROWS = ("zmq", "redis", "streams", "amqp")
NAMES = {
    "zmq": "ZeroMQ",
    "redis": "Redis Pub/Sub",
    "streams": "Redis Streams",
    "amqp": "AMQP (RabbitMQ)",
}
# which transport of each shape's results a row stands for (Redis Pub/Sub has no work
# queue nor request/reply: a Pub/Sub message goes to whoever listens now)
IN_SHAPE = {
    "zmq": {"fanout": "zmq", "workqueue": "zmq", "reqrep": "zmq"},
    "redis": {"fanout": "redis"},
    "streams": {"fanout": "streams", "workqueue": "streams", "reqrep": "redis"},
    "amqp": {"fanout": "amqp", "workqueue": "amqp", "reqrep": "amqp"},
}
SHAPE_NAMES = {"fanout": "fan-out", "workqueue": "work queue", "reqrep": "request/reply"}
REPLAY = {  # what each transport keeps once a message is delivered, where it was not measured
    "zmq": "none: a message lives in the peers' sockets until read",
    "redis": "none: delivered to whoever is subscribed at that moment",
    "streams": "yes: entries stay in the stream (to MAXLEN); any reader reads from any id",
    "amqp": "none in a queue (gone once acked); RabbitMQ streams would keep them",
}


def _at_top_rate(result: dict, key: str) -> float | None:
    steps = result.get("open_loop") or []
    return round(steps[-1][key], 3) if steps else None


def _cpu_ms(result: dict) -> float | None:
    ours, broker = result.get("ours_cpu_per_1000"), result.get("broker_cpu_per_1000")
    if ours is None:
        return None
    return round((ours + (broker or 0.0)) * 1000, 1)


def figures(load: dict, faults: dict) -> dict[str, dict[str, Any]]:
    """Every figure of the table, per transport (JSON-able; None where it does not apply)."""
    out: dict[str, dict[str, Any]] = {}
    backlog = load.get("backlog", {})
    for row in ROWS:
        shapes = IN_SHAPE[row]
        measured = {shape: load[shape]["transports"][t] for shape, t in shapes.items()}
        numbers: dict[str, Any] = {
            "name": NAMES[row],
            "throughput": {s: r["throughput"] for s, r in measured.items()},
            "p50_ms": {s: _at_top_rate(r, "p50_ms") for s, r in measured.items()},
            "p99_ms": {s: _at_top_rate(r, "p99_ms") for s, r in measured.items()},
            "p999_ms": {s: _at_top_rate(r, "p999_ms") for s, r in measured.items()},
            "top_rate": {s: load[s]["rates"][-1] for s in measured},
            "cpu_ms_per_1000": {s: _cpu_ms(r) for s, r in measured.items()},
            "broker_cpu_ms_per_1000": {
                s: None if r["broker_cpu_per_1000"] is None else r["broker_cpu_per_1000"] * 1000
                for s, r in measured.items()
            },
            "lost_under_load": sum(
                r["lost"] + sum(step["lost"] for step in r["open_loop"]) for r in measured.values()
            ),
            "reordered": sum(
                (r["reordered"] or 0) + sum(step["reordered"] or 0 for step in r["open_loop"])
                for r in measured.values()
            ),
            "replay": replay(load.get("replay", {}).get(row), row),
            "replay_read": load.get("replay", {}).get(row),
        }
        held = backlog.get(row, {})
        numbers["backlog_bytes_per_message"] = (
            None
            if held.get("growth_bytes") is None
            else round(held["growth_bytes"] / max(1, backlog.get("count", 1)), 1)
        )
        for fault, by_transport in faults.items():
            result = by_transport.get(row)
            if result is None:
                continue
            numbers[fault] = {
                k: result.get(k)
                for k in ("lost", "duplicated", "reordered", "sent", "measured", "detail")
            }
            if fault == "restart" and "aof" in result:
                numbers[fault]["lost_with_aof"] = result["aof"]["lost"]
            if fault == "slow":
                for k in ("producer_max_lag_ms", "broker_memory_growth_bytes", "others_lost"):
                    numbers[fault][k] = result.get(k)
            if "docs" in result:
                numbers[fault]["docs"] = result["docs"]
        out[row] = numbers
    return out


def replay(read: dict | None, row: str) -> str:
    """What a reader that came after the messages could read (`replay.late_readers`)."""
    if read is None:
        return f"{REPLAY[row]} (not measured)"
    sent, late = read["sent"], read["late_reader"]
    if late == sent:
        return f"yes: a reader that came after {sent} messages read all {late}"
    text = f"none: a reader that came after {sent} messages read {late}"
    if read.get("stream_queue_late_reader") is not None:
        text += f"; a RabbitMQ stream queue gave it {read['stream_queue_late_reader']}"
    return text


def _per_shape(values: dict[str, Any], unit: str = "", digits: int = 0) -> str:
    parts = []
    for shape, value in values.items():
        text = "n/a" if value is None else f"{value:,.{digits}f}{unit}"
        parts.append(f"{SHAPE_NAMES[shape]} {text}")
    return "; ".join(parts)


def guarantee(numbers: dict) -> str:
    kill, cut = numbers.get("sigkill", {}), numbers.get("cut", {})
    lost = {"a SIGKILL": kill.get("lost"), "a 2 s cut": cut.get("lost")}
    if all(v is None for v in lost.values()):
        return "not measured (no fault run)"
    if any(v for v in lost.values()):
        said = ", ".join(f"{v:,} after {k}" for k, v in lost.items() if v is not None)
        return f"at most once: lost {said}"
    duplicated = (kill.get("duplicated") or 0) + (cut.get("duplicated") or 0)
    return f"at least once: lost 0 after a SIGKILL and a 2 s cut, {duplicated:,} duplicated"


def ordering(numbers: dict) -> str:
    faulted = sum((numbers.get(f, {}).get("reordered") or 0) for f in ("sigkill", "cut"))
    total = numbers["reordered"] + faulted
    if not total:
        return "in order per producer (0 out of order, every run)"
    return f"{total:,} out of order (under load {numbers['reordered']:,}, under faults {faulted:,})"


def persistence(numbers: dict) -> str:
    restart = numbers.get("restart")
    if restart is None:
        return "none: no broker; what is in flight is in the peers' memory"
    if not restart.get("measured"):
        return "documented, not measured: durable queue + persistent messages survive a restart"
    if restart.get("lost_with_aof") is None:  # RabbitMQ: a private node killed, started again
        return (
            f"lost {restart['lost']:,} of {restart['sent']:,} when the broker was killed "
            f"(SIGKILL) and started again, {restart['duplicated']:,} duplicated"
        )
    return (
        f"lost {restart['lost']:,} of {restart['sent']:,} on a restart without AOF, "
        f"{restart['lost_with_aof']:,} with AOF"
    )


def backpressure(numbers: dict) -> str:
    slow = numbers.get("slow")
    if slow is None:
        return "not measured"
    text = f"10x slow consumer lost {slow['lost']:,}, the other {slow.get('others_lost') or 0:,}"
    if slow.get("broker_memory_growth_bytes") is not None:
        text += f"; broker memory +{slow['broker_memory_growth_bytes'] / 1e6:,.1f} MB"
    if slow.get("producer_max_lag_ms") is not None:
        text += f"; producer at most {slow['producer_max_lag_ms']:,.0f} ms behind schedule"
    return text


def cost(numbers: dict) -> str:
    text = "CPU ms/1,000: " + _per_shape(numbers["cpu_ms_per_1000"], digits=1)
    per_message = numbers["backlog_bytes_per_message"]
    if per_message is not None and per_message >= 1:
        text += f"; backlog {per_message:,.0f} B/message in the broker"
    elif per_message is not None:
        text += "; backlog in the socket buffers, not yet in the broker"
    return text


def rows(table: dict[str, dict]) -> list[dict[str, str]]:
    """One row per transport, every cell text computed from `figures`."""
    return [
        {
            "transport": numbers["name"],
            "delivery seen": guarantee(numbers),
            "ordering": ordering(numbers),
            "persistence": persistence(numbers),
            "replay/history": numbers["replay"],
            "backpressure": backpressure(numbers),
            "throughput/s": _per_shape(numbers["throughput"]),
            "p99 at the top rate": _per_shape(numbers["p99_ms"], " ms", 1),
            "cost": cost(numbers),
        }
        for numbers in table.values()
    ]


def _best(table: dict[str, dict], field: str, low: bool) -> dict[str, str]:
    """For each shape, the transport with the best `field` (lowest if `low`)."""
    best: dict[str, str] = {}
    for shape in SHAPE_NAMES:
        values = {
            row: n[field][shape] for row, n in table.items() if n[field].get(shape) is not None
        }
        if len(values) > 1:
            best[shape] = (min if low else max)(values, key=values.__getitem__)
    return best


def choose_when(table: dict[str, dict]) -> list[str]:
    """A sentence per transport: its strengths and weaknesses as this run measured them."""
    fastest, slowest = _best(table, "throughput", False), _best(table, "throughput", True)
    calmest = _best(table, "p99_ms", True)
    cheapest, dearest = (
        _best(table, "cpu_ms_per_1000", True),
        _best(table, "cpu_ms_per_1000", False),
    )

    def shapes(best: dict[str, str], row: str) -> str:
        return ", ".join(SHAPE_NAMES[s] for s, r in best.items() if r == row)

    advice = []
    for row, n in table.items():
        good, bad = [], []
        kill, cut = n.get("sigkill", {}), n.get("cut", {})
        if not (kill.get("lost") or cut.get("lost")):
            good.append("no message may be lost when a consumer crashes or its connection drops")
        else:
            bad.append(
                f"a lost message matters (lost {kill.get('lost') or 0:,} after a SIGKILL, "
                f"{cut.get('lost') or 0:,} across a 2 s cut)"
            )
        if shapes(fastest, row):
            good.append(f"throughput counts (fastest here in {shapes(fastest, row)})")
        if shapes(slowest, row):
            bad.append(f"you need the most messages per second (slowest in {shapes(slowest, row)})")
        if shapes(calmest, row):
            good.append(f"a low p99 counts (lowest in {shapes(calmest, row)})")
        if shapes(cheapest, row):
            good.append(f"CPU is scarce (cheapest per message in {shapes(cheapest, row)})")
        if shapes(dearest, row):
            bad.append(f"CPU is scarce (dearest per message in {shapes(dearest, row)})")
        if n["replay"].startswith("yes"):
            good.append("readers must catch up or replay history")
        restart = n.get("restart")
        if restart is None:
            good.append("there must be no broker to run")
            bad.append("messages must outlive a process")
        elif restart.get("measured") and not restart["lost"]:
            good.append("messages must outlive a broker crash (lost 0 when it was killed)")
        elif restart.get("measured") and restart.get("lost"):
            bad.append(
                f"messages must survive a broker restart (lost {restart['lost']:,} "
                f"without AOF, {restart.get('lost_with_aof', 0):,} with it)"
                if restart.get("lost_with_aof") is not None
                else f"messages must survive a broker restart (lost {restart['lost']:,})"
            )
        if kill.get("lost") or cut.get("lost"):  # lossy: is it at least cheaper than the safe?
            saved = []
            for shape, cpu in n["cpu_ms_per_1000"].items():
                safe = {
                    m["name"]: m["cpu_ms_per_1000"].get(shape)
                    for m in table.values()
                    if not (m.get("sigkill", {}).get("lost") or m.get("cut", {}).get("lost"))
                    and m["cpu_ms_per_1000"].get(shape) is not None
                }
                if (
                    cpu is not None
                    and safe
                    and cpu < min(safe.values())
                    and cheapest.get(shape) != row
                ):
                    name = min(safe, key=safe.__getitem__)
                    saved.append(
                        f"{SHAPE_NAMES[shape]} {cpu:,.0f} against {safe[name]:,.0f} for {name}"
                    )
            if saved:
                good.append(
                    f"a missed message may be dropped to save CPU (ms/1,000: {'; '.join(saved)})"
                )
        if len(n["throughput"]) == 1:
            bad.append("you need a work queue or request/reply (it only fans out)")
        text = (
            f"**{n['name']}** when " + "; ".join(good) + "."
            if good
            else f"**{n['name']}**: nothing stood out in this run's figures."
        )
        advice.append(text + (" Not when " + "; ".join(bad) + "." if bad else ""))
    return advice
