"""The forward pass: runtimes, the batch-size probe, the shard worker and the Ray engine."""
