"""LRU cache of image encodings, keyed by a hash of the image bytes.

Lives on the executor thread (only jobs touch it), so it needs no lock; the counters are plain
integers that the status RPC may read at any time. Bounded by entry count and by bytes of device
memory the encodings hold.
"""

from __future__ import annotations

import collections
from typing import Any


class EmbeddingCache:
    def __init__(self, *, max_entries: int, max_bytes: int) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: collections.OrderedDict[str, tuple[Any, int]] = collections.OrderedDict()
        self.bytes = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> Any | None:
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry[0]

    def put(self, key: str, state: Any, nbytes: int) -> None:
        if self.max_entries <= 0 or nbytes > self.max_bytes:
            return
        old = self._entries.pop(key, None)
        if old is not None:
            self.bytes -= old[1]
        self._entries[key] = (state, nbytes)
        self.bytes += nbytes
        while len(self._entries) > self.max_entries or self.bytes > self.max_bytes:
            _, (_, evicted_bytes) = self._entries.popitem(last=False)
            self.bytes -= evicted_bytes

    def clear(self) -> None:
        self._entries.clear()
        self.bytes = 0
