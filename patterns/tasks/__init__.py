"""Task distribution: the hashsum cracker over three transports.

A producer cuts the search space (every word up to a length, over an alphabet) into
batches; workers, one process per core, hash every candidate of a batch and report; a
collector gathers the reports, says when the word is found and accounts for every task.

* `space`: index <-> word numbering, and the hashing loop over a batch;
* `wire`: tasks, `Found: <word>` results and the reports, as they travel;
* `work`: what a worker does with one task, whatever carried it;
* `collect`: the collector's bookkeeping and its delivery ledger;
* `zeromq`, `amqp`, `streams`: producer, worker and collector for each transport;
* `job`: a job's plan and its channels (the book's by default);
* `run`: a whole job from a notebook, its children, faults and live plot.

From a terminal: `python -m patterns.tasks producer|worker|collector --transport ...`.
"""
