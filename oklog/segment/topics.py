"""The topic block index: which blocks of a segment hold records of a topic.

Theory of operation
-------------------
A query with ``topic=T`` can only match records of topic ``T``.  The
trigram index (``oklog.segment.ngram``) cannot say that exactly: it mixes
topic and payload bytes, and a topic shorter than three bytes has no
trigram.  So each segment also keeps, per topic, the set of blocks holding
at least one record of it (a bit mask, bit ``i`` for block ``i``); a block
with no record of ``T`` is never read for such a query.

Most blocks hold one topic (static topic mode, or one busy producer), so
``block_topics`` first checks, vectorised with numpy over the line starts,
whether every record has the first record's topic; only a block that mixes
topics is walked by one C-level ``findall`` over its record headers.

A segment holding more than ``MAX_TOPICS`` distinct topics gets no topic
index (``build`` returns None): every block is then read, as before.  The
index is built with the n-gram index (in the background, by a scan worker)
and kept in the segment's sidecar; like every index here it is a filter
only, never dropping a block that can match.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import numpy as np

__all__ = ["MAX_TOPICS", "TopicIndex", "block_topics", "build"]

#: Distinct topics beyond which a segment gets no topic index.
MAX_TOPICS = 4096
_HEADER = 27  # ULID SP: the topic starts here
_TOPIC_FIELD = re.compile(rb"[^ \n]* ([^ \n]*) [^\n]*\n")


def block_topics(block: bytes) -> set[bytes]:
    """The distinct topics of a block of whole records (each ``ULID SP
    TOPIC SP PAYLOAD LF``).  Lines without a topic field count for none."""
    if len(block) <= _HEADER:
        return set(_TOPIC_FIELD.findall(block))
    end = block.find(b" ", _HEADER)
    nl = block.find(b"\n")
    if end < 0 or block[_HEADER - 1 : _HEADER] != b" " or (0 <= nl < end):
        return set(_TOPIC_FIELD.findall(block))
    field = block[_HEADER - 1 : end + 1]  # " TOPIC "
    data = np.frombuffer(block, np.uint8)
    starts = np.flatnonzero(data == 10)[:-1] + 1  # every line but the first
    if len(starts):
        # the bytes each later line holds where its " TOPIC " would be
        where = (starts[:, None] + np.arange(_HEADER - 1, _HEADER - 1 + len(field))).ravel()
        where = np.minimum(where, len(data) - 1)
        same = np.array_equal(data[where], np.tile(np.frombuffer(field, np.uint8), len(starts)))
        if not same:
            return set(_TOPIC_FIELD.findall(block))
    return {field[1:-1]}


class TopicIndex:
    """A segment's topics and, for each, the blocks that hold it."""

    __slots__ = ("blocks", "masks")

    def __init__(self, masks: Mapping[bytes, int], blocks: int) -> None:
        self.masks = dict(masks)
        self.blocks = blocks

    def blocks_with(self, topic: bytes) -> int:
        """Blocks holding records of ``topic``, as a bit mask (bit i: block i)."""
        return self.masks.get(topic, 0)

    def to_json(self) -> dict[str, str]:
        """For the sidecar header: topic → hex mask (topics are ASCII in a
        sound segment; latin-1 keeps any byte round-tripping)."""
        return {t.decode("latin-1"): format(m, "x") for t, m in sorted(self.masks.items())}

    @classmethod
    def from_json(cls, data: object, blocks: int) -> "TopicIndex":
        """The inverse of ``to_json``; ValueError/TypeError on anything else."""
        if not isinstance(data, dict):
            raise TypeError("topics: not an object")
        masks = {}
        for name, mask in data.items():
            if not isinstance(name, str) or not isinstance(mask, str):
                raise TypeError("topics: not a name and a hex mask")
            value = int(mask, 16)
            if value < 0 or value >> blocks:
                raise ValueError("topics: a mask names a block beyond the table")
            masks[name.encode("latin-1")] = value
        return cls(masks, blocks)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TopicIndex) and (self.masks, self.blocks) == (other.masks, other.blocks)

    def __repr__(self) -> str:
        return f"TopicIndex({len(self.masks)} topics, {self.blocks} blocks)"


def build(per_block: Iterable[set[bytes]]) -> TopicIndex | None:
    """The index of a segment whose block ``i`` holds the topics ``per_block[i]``;
    None when it holds more than ``MAX_TOPICS`` distinct topics."""
    masks: dict[bytes, int] = {}
    n = 0
    for i, topics in enumerate(per_block):
        n = i + 1
        for topic in topics:
            masks[topic] = masks.get(topic, 0) | 1 << i
        if len(masks) > MAX_TOPICS:
            return None
    return TopicIndex(masks, n)
