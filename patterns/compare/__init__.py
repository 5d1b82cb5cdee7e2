"""Choosing a transport: every transport on the same work, side by side (notebook 11).

* `workqueue`: the work queue as a plain pattern per transport (one producer, competing
  workers), with nothing to compute, so the transport is what is measured;
* `load`: the three shapes (fan-out, work queue, request/reply) under load: closed-loop
  throughput, open-loop latency at shared offered rates, CPU per 1,000 messages, broker
  memory with a backlog;
* `replay`: what a reader that comes after the messages can still read;
* `faults`: the same transports under faults (a consumer killed, a connection cut, a
  broker restarted, a slow consumer), counted with the delivery ledger;
* `table`: the decision table computed from both results;
* `python -m patterns.compare --json [--quick]`: all of it as one JSON object.
"""
