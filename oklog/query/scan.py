"""The grep engine: the records of sorted blocks that match a query.

Theory of operation
-------------------
A segment reader (``oklog.segment``) hands out the blocks of records
``ULID SP TOPIC SP PAYLOAD LF`` of a ULID range, in order, each whole lines
of about ``CHUNK`` bytes; ``Matcher.scan_blocks`` turns them into *blocks*
of whole matching records, in order.  ``scan`` does the same for one sorted
buffer (``bytes``, ``bytearray``, ``mmap``): binary search of the range
(``oklog.records.search.bisect``), then the matcher.

Semantics (``Matcher.match`` is the per-record reference): ``q`` is matched
against the payload only — the bytes after the second space — never the ULID
or topic; an empty ``q`` matches everything; a plain ``q`` is a substring; a
regex (RE2 syntax, as Go's; ``compile_regex``) is searched in the payload,
so ``^``/``$``/``\\A``/``\\z`` mean the payload's start and end.  ``topic`` keeps only records whose
topic is exactly that.  Lines without two spaces never match.  Only complete
lines count: bytes after the buffer's last LF are ignored.

The data path has no per-record Python loop in the common cases.  Each
strategy walks *hits* within a block (a *chunk* below), expanding a hit to its line only when it needs to; adjacent matching
lines are kept as one slice, and slices are joined into blocks of about
``BATCH`` bytes.  The matcher picks its strategy once, when compiled:

``all``       empty ``q``, or a regex that matches every payload (``.*``),
              and no topic: the chunks themselves are the blocks.  Lines are
              not re-validated here (store segments are validated when
              written); every other strategy skips lines without a header.
``topic``     empty ``q`` with a topic: ``find`` `` TOPIC ``; if it is the
              line's topic field, one regex ``match`` swallows the run of
              following records of that topic.
``literal``   plain ``q``: ``find`` loop; a hit with two spaces before it on
              its line is in the payload (one ``count``); otherwise the payload
              alone is searched again (``q`` may also occur in the header).
              A hit on the line right after the previous hit's line extends
              the current run without an ``rfind`` for its start.  When ``q``
              cannot begin inside a header (``_payload_only``: no topic, and a
              byte outside the header alphabet ``[0-9A-Za-z_-]`` comes before
              any space in ``q``), there is no header check at all: every hit
              is a matching line.  Like ``all``, this relies on store segments
              being validated when written (a malformed line whose first two
              fields contain such a ``q`` would be kept).
``regex``     a *local* regex (below) that starts with a literal, or has no
              literal of 3+ bytes to look for: ``pattern.search`` over the
              chunk (RE2 scans fast for a leading literal); the line holding
              the match *start* is checked — the match may have started in the
              header, then its payload is searched in place — and the search
              goes on at the next line.
``prefilter`` a regex with a required literal (2+ bytes if not local, 3+ if
              local; ``ERROR`` in ``^ERROR``, ``(?i)error``, ``\\bERROR``):
              ``find`` loop on the literal (on an ASCII-lowercased copy of the
              chunk under ``(?i)``) picks candidate lines, then the regex is
              searched in a copy of each candidate's payload, so anchors see
              exactly the payload.  The literal comes from
              ``oklog.query.literals`` (which also feeds the block index).
``lines``     anything else (``^E``, ``\\s``, ``(?s)a.b``): split the chunk into
              lines once, search every payload.  Correct, and 2-4x slower.
``none``      ``q``, or a literal every match of the regex needs, contains LF:
              payloads never do.

A regex is *local* — safe to search across the whole buffer — when no part of
it can match LF (no ``\\n``, ``[^x]``, ``\\s``, ``\\D``, ``\\W``, ``(?s).``…)
and nothing in it looks outside the match (no ``^ $ \\A \\z``; ``\\b``/``\\B`` are fine because the payload is framed by a
space and LF, both non-word bytes; an empty payload is the one place they
differ, so it is checked against ``b""`` itself).  Then a match inside a
payload is a match at the same offset of the chunk, so the leftmost-match
search cannot skip a matching record, and no match runs from one record into
the next.  The rule is decided on the parsed pattern (Python's
``re._parser``, used only for patterns whose syntax it reads as RE2 does,
``literals.whitelisted``); anything else falls back to ``lines``: slower,
never wrong.  The property tests compare every strategy with a plain
per-line RE2 search over payloads.

Performance is that of ``bytes.find`` and RE2 in C: rare terms and
literal-led regexes run at grep speed; a term on most lines costs ~0.3 µs
per line (one split and a C-level filter); RE2 matches in linear time
whatever the pattern, but each call costs ~3 µs, so the strategies call it
as little as they can.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from itertools import compress, repeat
from operator import contains
from re import _constants as _sre  # type: ignore[attr-defined]
from re import _parser as _sre_parse  # type: ignore[attr-defined]
from typing import Any, Protocol

import re2

from oklog.errors import BadQuery
from oklog.query import literals
from oklog.query.literals import Required
from oklog.records.search import Buffer, bisect, line_range, line_slices

__all__ = ["BATCH", "CHUNK", "Matcher", "Scoped", "scan"]

CHUNK = 1 << 20  # work unit: ranges are scanned in chunks of about this size, cut at LFs
BATCH = 256 << 10  # matched bytes gathered before a block is yielded

_NL = b"\n"
_SP = b" "
_SAMPLE = 32 << 10  # bytes looked at to tell a dense literal from a sparse one
_DENSE = 3  # dense: a hit on more than a third of the sample's lines
# bytes a record header (``ULID SP TOPIC SP``) holds besides its two spaces
_HEADER_BYTES = frozenset(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_-")


# --- regex analysis ----------------------------------------------------------

_REPEATS = {_sre.MAX_REPEAT, _sre.MIN_REPEAT, _sre.POSSESSIVE_REPEAT}
_HARMLESS_AT = {_sre.AT_BOUNDARY, _sre.AT_NON_BOUNDARY}
_NL_CATEGORIES = {
    _sre.CATEGORY_NOT_DIGIT,
    _sre.CATEGORY_SPACE,
    _sre.CATEGORY_NOT_WORD,
    _sre.CATEGORY_LINEBREAK,
}
_NO_NL_CATEGORIES = {
    _sre.CATEGORY_DIGIT,
    _sre.CATEGORY_NOT_SPACE,
    _sre.CATEGORY_WORD,
    _sre.CATEGORY_NOT_LINEBREAK,
}


class _Shape:
    """What the walk over a parsed pattern found."""

    def __init__(self) -> None:
        self.local = True  # nothing looks outside the match (see module doc)
        self.newline = False  # some part can match LF
        self.zero_width = False  # uses \b or \B (or a non-local assertion)


def _set_has_newline(items: Any) -> bool:
    """Can the character set ``[...]`` match LF?  (Unknown items: assume so.)"""
    negate = False
    has = False
    for op, av in items:
        if op is _sre.NEGATE:
            negate = True
        elif op is _sre.LITERAL:
            has |= av == 10
        elif op is _sre.RANGE:
            has |= av[0] <= 10 <= av[1]
        elif op is _sre.CATEGORY and av in _NL_CATEGORIES:
            has = True
        elif not (op is _sre.CATEGORY and av in _NO_NL_CATEGORIES):
            return True
    return has != negate


def _walk(items: Any, shape: _Shape, dotall: bool) -> None:
    for op, av in items:
        if op is _sre.LITERAL:
            shape.newline |= av == 10
        elif op is _sre.NOT_LITERAL:
            shape.newline |= av != 10
        elif op is _sre.ANY:
            shape.newline |= dotall
        elif op is _sre.IN:
            shape.newline |= _set_has_newline(av)
        elif op in _REPEATS:
            _walk(av[2], shape, dotall)
        elif op is _sre.SUBPATTERN:
            _walk(av[3], shape, dotall or bool(av[1] & re.DOTALL))
        elif op is _sre.ATOMIC_GROUP:
            _walk(av, shape, dotall)
        elif op is _sre.BRANCH:
            for branch in av[1]:
                _walk(branch, shape, dotall)
        elif op is _sre.GROUPREF_EXISTS:
            _walk(av[1], shape, dotall)
            if av[2] is not None:
                _walk(av[2], shape, dotall)
        elif op is _sre.GROUPREF:
            pass  # repeats what a group matched: checked at the group
        elif op is _sre.AT:
            shape.zero_width = True
            shape.local &= av in _HARMLESS_AT
        else:  # lookaround, anything unknown
            shape.zero_width = True
            shape.local = False
            shape.newline = True


# --- the matcher -------------------------------------------------------------

_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # a bad pattern is the user's 400, not our log line


def compile_regex(q: bytes) -> Any:
    """``q`` compiled by RE2 (Go's regexp syntax, linear-time matching);
    ``BadQuery`` with RE2's reason when it is not valid RE2 syntax."""
    try:
        return re2.compile(q, options=_RE2_OPTIONS)
    except (re2.error, TypeError, ValueError) as exc:
        reason = exc.args[0] if exc.args else exc
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "backslashreplace")
        msg = " ".join(str(reason).split())
        hint = ""
        if "escape sequence" in msg or "perl operator" in msg:
            hint = " (RE2 syntax, as Go's regexp: no backreferences or lookarounds)"
        raise BadQuery(f'invalid "q": bad regex: {msg}{hint}') from None



class Matcher:
    """A compiled ``q``/``regex``/``topic``: matches records, scans ranges.

    Immutable after construction; safe to share between threads and tasks.
    Raises ``BadQuery`` for an invalid regex.
    """

    __slots__ = (
        "q", "regex", "topic", "pattern", "strategy", "required", "_needle", "_fold", "_run",
        "_empty_ok", "_payload_only",
    )

    def __init__(self, q: bytes = b"", regex: bool = False, topic: bytes | None = None) -> None:
        self.q = bytes(q)
        self.regex = regex
        self.topic = topic
        self.pattern: Any = None  # a compiled RE2 pattern
        self.required = Required()  # what every match contains (for the block index)
        self._needle = b""
        self._fold = False
        self._run: re.Pattern[bytes] | None = None
        self._empty_ok = False
        self.strategy = self._plan()
        self._payload_only = (
            self.strategy == "literal" and topic is None and _never_in_header(self.q)
        )
        if topic is not None and self.strategy == "all":
            self.strategy = "topic"
            self._needle = _SP + topic + _SP
            self._run = re.compile(rb"(?:[^ \n]*+ " + re.escape(topic) + rb" .*+\n)*+")

    def _plan(self) -> str:
        q = self.q
        if not q:
            return "all"
        if not self.regex:
            self.required = Required(((q,),))
            return "none" if _NL in q else "literal"
        self.pattern = pattern = compile_regex(q)
        self._empty_ok = pattern.search(b"") is not None
        self.required = literals.required(q)
        if not literals.whitelisted(q):  # Python's parser may read it otherwise
            return "lines"
        try:
            parsed = _sre_parse.parse(q, 0)
            shape = _Shape()
            _walk(parsed, shape, bool(parsed.state.flags & re.DOTALL))
        except Exception:  # a parser we do not know: stay correct, go slow
            return "lines"
        fold = self.required.fold
        literal = self.required.longest()
        led = not fold and bool(parsed) and parsed[0][0] is _sre.LITERAL
        if _NL in literal:
            return "none"
        local = shape.local and not shape.newline
        if local and not shape.zero_width and self._empty_ok:
            return "all"  # matches the empty string anywhere, so every payload
        if local and (led or len(literal) < 3):
            return "regex"
        if len(literal) >= 2:
            self._needle = literal
            self._fold = fold
            return "prefilter"
        return "lines"

    def __repr__(self) -> str:
        return (
            f"Matcher(q={self.q!r}, regex={self.regex}, topic={self.topic!r}, "
            f"strategy={self.strategy!r})"
        )

    # -- one record: the reference semantics ----------------------------------

    def match(self, record: bytes) -> bool:
        """Does one record line (with or without its LF) match?"""
        if record.endswith(_NL):
            record = record[:-1]
        parts = record.split(_SP, 2)
        if len(parts) < 3 or _NL in record:
            return False
        if self.topic is not None and parts[1] != self.topic:
            return False
        payload = parts[2]
        if self.pattern is not None:
            return self.pattern.search(payload) is not None
        return self.q in payload

    # -- a range of records ----------------------------------------------------

    def scan_blocks(self, blocks: Iterable[bytes]) -> Iterator[bytes]:
        """The matching records of ``blocks`` (each whole lines, in ULID
        order), as blocks of about ``BATCH`` bytes."""
        strategy = self.strategy
        if strategy == "none":
            return iter(())
        if strategy == "all":
            return iter(blocks)
        return _batched(map(self._grep_chunk(), blocks))

    def _grep_chunk(self) -> Callable[[bytes], list[bytes]]:
        """The ``_grep_*`` of this matcher's strategy (not ``all``/``none``)."""
        return {
            "literal": self._grep_literal,
            "topic": self._grep_topic,
            "regex": self._grep_regex,
            "prefilter": self._grep_prefilter,
            "lines": self._grep_lines,
        }[self.strategy]

    def grep(self, blocks: list[bytes]) -> bytes:
        """The matching records of ``blocks`` (as for ``scan_blocks``), joined
        once into one ``bytes``."""
        return b"".join(self.grep_parts(blocks))

    def grep_parts(self, blocks: list[bytes]) -> list[bytes]:
        """The matching records of ``blocks`` as a list of whole-line pieces
        (what a scan unit returns: joining them is left to whoever must)."""
        strategy = self.strategy
        if strategy == "none" or not blocks:
            return []
        if strategy == "all":
            return blocks
        grep = self._grep_chunk()
        parts: list[bytes] = []
        for block in blocks:
            parts.extend(grep(block))
        return parts

    # Each _grep_* takes one chunk (bytes of whole lines, ending in LF) and
    # returns the matching lines as a list of slices of it: runs of adjacent
    # matching lines are kept as one slice.  The loops walk hits, not lines:
    # ``i`` a hit, ``ls``/``le`` its line's start and LF, ``ps`` the payload.

    def _grep_literal(self, chunk: bytes) -> list[bytes]:
        if self._payload_only:
            return self._grep_payload_literal(chunk)
        if self.topic is not None:
            return self._grep_topic_literal(chunk)
        q = self.q
        find, rfind, count = chunk.find, chunk.rfind, chunk.count
        parts: list[bytes] = []
        rs = re_ = pos = 0  # the current run of matching lines is [rs, re_)
        while True:
            i = find(q, pos)
            if i < 0:
                break
            le = find(_NL, pos)  # the line at pos (q has no LF; the chunk ends with one)
            if i < le:
                ls = pos  # the hit is on it: no rfind
            else:
                ls = rfind(_NL, le, i) + 1
                le = find(_NL, i)
            pos = le + 1
            # two spaces before the hit: it is in the payload (and the line
            # has a header); else look in the payload alone
            if count(_SP, ls, i) < 2:
                ps = _payload_start(chunk, ls, le)
                if ps < 0 or find(q, ps, le) < 0:
                    continue
            if ls != re_:
                if re_ > rs:
                    parts.append(chunk[rs:re_])
                rs = ls
            re_ = pos
        if re_ > rs:
            parts.append(chunk[rs:re_])
        return parts

    def _grep_payload_literal(self, chunk: bytes) -> list[bytes]:
        # Every hit is in a payload (see _never_in_header), so every line
        # with a hit matches: no header check.  Runs of adjacent matching
        # lines are extended without looking up line starts; an rfind is
        # needed only where a new run begins.  When most lines match (a
        # sample of the chunk says), one split and a C-level filter over
        # the lines is faster than walking the hits (measured: ~25%).
        q = self.q
        if len(chunk) > _SAMPLE and chunk.count(q, 0, _SAMPLE) * _DENSE > chunk.count(_NL, 0, _SAMPLE):
            lines = chunk.split(_NL)
            lines.pop()  # after the final LF
            keep = list(compress(lines, map(contains, lines, repeat(q))))
            if not keep:
                return []
            keep.append(b"")
            return [_NL.join(keep)]
        find, rfind = chunk.find, chunk.rfind
        parts: list[bytes] = []
        rs = pos = 0  # the current run is [rs, pos): every hit so far matched
        while True:
            i = find(q, pos)
            if i < 0:
                break
            le = find(_NL, pos)  # end of the line after the run
            if i > le:  # the hit is further on: close the run, start a new one
                if pos > rs:
                    parts.append(chunk[rs:pos])
                rs = rfind(_NL, le, i) + 1
                le = find(_NL, i)
            pos = le + 1
        if pos > rs:
            parts.append(chunk[rs:pos])
        return parts

    def _grep_topic_literal(self, chunk: bytes) -> list[bytes]:
        q, topic = self.q, self.topic
        assert topic is not None
        find, rfind = chunk.find, chunk.rfind
        parts: list[bytes] = []
        rs = re_ = pos = 0
        tfield = topic + _SP
        tl = len(tfield)
        while True:
            i = find(q, pos)
            if i < 0:
                break
            ls = rfind(_NL, pos, i) + 1 or pos
            le = find(_NL, i)  # q has no LF and the chunk ends with one
            pos = le + 1
            p1 = find(_SP, ls, le)
            if p1 < 0 or chunk[p1 + 1 : p1 + 1 + tl] != tfield:
                continue
            ps = p1 + 1 + tl
            if i < ps and find(q, ps, le) < 0:
                continue
            if ls != re_:
                if re_ > rs:
                    parts.append(chunk[rs:re_])
                rs = ls
            re_ = pos
        if re_ > rs:
            parts.append(chunk[rs:re_])
        return parts

    def _grep_topic(self, chunk: bytes) -> list[bytes]:
        needle, run = self._needle, self._run
        assert run is not None
        find, rfind = chunk.find, chunk.rfind
        parts: list[bytes] = []
        pos = 0
        while True:
            i = find(needle, pos)  # " TOPIC "
            if i < 0:
                break
            ls = rfind(_NL, pos, i) + 1 or pos
            pos = find(_NL, i) + 1
            if find(_SP, ls, pos) != i:  # not the topic field of its line
                continue
            m = run.match(chunk, pos)  # and the records after it, in C
            assert m is not None  # the run pattern matches the empty string
            pos = m.end()
            parts.append(chunk[ls:pos])
        return parts

    def _grep_regex(self, chunk: bytes) -> list[bytes]:
        pattern, topic, empty_ok = self.pattern, self.topic, self._empty_ok
        assert pattern is not None
        search = pattern.search
        find, rfind, count = chunk.find, chunk.rfind, chunk.count
        parts: list[bytes] = []
        rs = re_ = pos = 0
        while True:
            m = search(chunk, pos)
            if m is None:
                break
            i = m.start()
            le = find(_NL, i)
            if le < 0:  # an empty match after the last LF
                break
            ls = rfind(_NL, pos, i) + 1 or pos
            pos = le + 1
            if topic is not None or i == le or count(_SP, ls, i) < 2:
                ps = _payload_start(chunk, ls, le, topic)
                if ps < 0:
                    continue
                if ps == le:  # empty payload: \B differs between b"" and b" \n"
                    if not empty_ok:
                        continue
                elif i < ps and search(chunk, ps, le) is None:
                    # searched in place: a local pattern cannot tell
                    continue
            if ls != re_:
                if re_ > rs:
                    parts.append(chunk[rs:re_])
                rs = ls
            re_ = pos
        if re_ > rs:
            parts.append(chunk[rs:re_])
        return parts

    def _grep_prefilter(self, chunk: bytes) -> list[bytes]:
        needle, pattern, topic = self._needle, self.pattern, self.topic
        assert pattern is not None
        search = pattern.search
        hay = chunk.lower() if self._fold else chunk  # same offsets, ASCII folded
        find, rfind = hay.find, hay.rfind
        parts: list[bytes] = []
        rs = re_ = pos = 0
        while True:
            i = find(needle, pos)
            if i < 0:
                break
            ls = rfind(_NL, pos, i) + 1 or pos
            le = find(_NL, i)
            if le < 0:
                break
            pos = le + 1
            ps = _payload_start(chunk, ls, le, topic)
            if ps < 0 or (i < ps and find(needle, ps, le) < 0):
                continue  # no header, other topic, or the literal is only in the header
            if search(chunk[ps:le]) is None:  # a copy: anchors see the payload alone
                continue
            if ls != re_:
                if re_ > rs:
                    parts.append(chunk[rs:re_])
                rs = ls
            re_ = pos
        if re_ > rs:
            parts.append(chunk[rs:re_])
        return parts

    def _grep_lines(self, chunk: bytes) -> list[bytes]:
        pattern, topic = self.pattern, self.topic
        assert pattern is not None
        search = pattern.search
        keep = []
        lines = chunk.split(_NL)
        lines.pop()  # the empty string after the final LF
        for line in lines:
            parts = line.split(_SP, 2)
            if len(parts) == 3 and (topic is None or parts[1] == topic) and search(parts[2]):
                keep.append(line)
        if not keep:
            return []
        keep.append(b"")
        return [_NL.join(keep)]


def _never_in_header(q: bytes) -> bool:
    """Can no occurrence of ``q`` begin in a valid record header?

    True when a byte outside ``[0-9A-Za-z_-]`` and SP comes before any SP in
    ``q``.  An occurrence beginning in the header ``ULID SP TOPIC SP`` would
    match header bytes from its start up to the header's last SP: a prefix of
    ``q`` made only of header bytes and ending in SP (or all of ``q``, if it
    ends inside the header).  Such a ``q`` has no such prefix.
    """
    for b in q:
        if b == 32:
            return False
        if b not in _HEADER_BYTES:
            return True
    return False


def _payload_start(chunk: bytes, ls: int, le: int, topic: bytes | None = None) -> int:
    """Offset of the payload of line ``chunk[ls:le]``; -1 if it has no header
    (fewer than two spaces) or its topic is not ``topic`` (when given)."""
    p1 = chunk.find(_SP, ls, le)
    if p1 < 0:
        return -1
    p2 = chunk.find(_SP, p1 + 1, le)
    if p2 < 0 or (topic is not None and chunk[p1 + 1 : p2] != topic):
        return -1
    return p2 + 1


def _batched(part_lists: Iterator[list[bytes]]) -> Iterator[bytes]:
    """Join parts into blocks of about ``BATCH`` bytes."""
    held: list[bytes] = []
    size = 0
    for parts in part_lists:
        for part in parts:
            held.append(part)
            size += len(part)
            if size >= BATCH:
                yield held[0] if len(held) == 1 else b"".join(held)
                held = []
                size = 0
    if held:
        yield held[0] if len(held) == 1 else b"".join(held)


# --- entry points ------------------------------------------------------------


class Scoped(Protocol):
    """What a scan needs of a query: its ULID range and its matcher."""

    @property
    def lo(self) -> bytes: ...

    @property
    def hi(self) -> bytes: ...

    @property
    def matcher(self) -> "Matcher": ...


def scan(
    buf: Buffer,
    query: Scoped,
    matcher: Matcher | None = None,
    start: int = 0,
    end: int | None = None,
) -> Iterator[bytes]:
    """Blocks of the records in ``buf[start:end]`` with a ULID in ``[lo, hi]``
    that match ``query`` (``matcher`` defaults to ``query.matcher``).

    ``buf`` is one sorted buffer of records (segment readers hand their
    blocks to :meth:`Matcher.scan_blocks` directly).  Blocks are whole
    records with their LFs, in buffer order; ``b"".join`` of them is the
    result.
    """
    s, e = line_range(buf, start, end)
    lo = bisect(buf, query.lo, s, e)
    hi = bisect(buf, query.hi, lo, e, after=True)
    return (matcher or query.matcher).scan_blocks(line_slices(buf, lo, hi, CHUNK))
