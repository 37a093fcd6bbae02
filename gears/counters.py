"""What a shard worker counts; its heartbeat reports the running totals."""

from __future__ import annotations

from dataclasses import dataclass, field, fields


@dataclass
class Counters:
    requests: int = 0  # read requests answered
    batches: int = 0  # reply groups read (one forward pass each)
    pairs: int = 0  # (question, window) pairs read
    ingested: int = 0  # ingest entries handled
    reembedded: int = 0  # passages embedded again for a new encoder (gears/reembed.py)
    keymiss: int = 0  # redis-cli answer keys filled
    keymiss_dropped: int = 0  # key misses not answered: over the key-miss budget
    errors: int = 0  # failures the worker survived (Redis trouble, a failing batch)
    dead: int = 0  # entries moved to a dead-letter stream
    batch_sizes: dict[int, int] = field(default_factory=dict)

    def batch(self, size: int) -> None:
        self.batches += 1
        self.batch_sizes[size] = self.batch_sizes.get(size, 0) + 1

    def as_dict(self) -> dict:
        """A snapshot: the heartbeat's thread reads it while the loop counts (copying the
        dict is one step under the GIL; iterating it while it grows is not)."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["batch_sizes"] = dict(self.batch_sizes)
        return data
