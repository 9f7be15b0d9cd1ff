"""Jobs: the record, the queue users enqueue into, its workers, rate limits,
and the feeder that turns schedule slots into jobs. Public names are
exported by `kernel` (and the record by `kernel.ports`)."""
