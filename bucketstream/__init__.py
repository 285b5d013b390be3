"""bucketstream: a distributed rate limiter; token buckets as a CRDT (``crdt``), replicated through Kafka by Faust."""

__version__ = "0.1.0"
