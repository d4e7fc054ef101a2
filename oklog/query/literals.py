"""The literals every match of a regular expression must contain.

``required(pattern)`` returns an AND of clauses, each clause an OR of
literals: every string the pattern matches contains, for each clause, at
least one of its literals.  ``ERROR.*status=500`` gives
``[[b"ERROR"], [b"status=500"]]``; ``(WARN|ERROR) db`` gives
``[[b"WARN", b"ERROR"], [b" db"]]``.  The query engine uses them twice:
blocks whose n-gram index lacks a clause are never read, and the longest
single literal is searched with ``bytes.find`` before the regex runs.

Patterns are RE2 syntax (what matches them is RE2), but the structure is
read with Python's own regex parser, which agrees with RE2 on the common
syntax only.  So a pattern is first tokenised against a whitelist of
constructs both read the same way; anything else (``[[:alpha:]]``,
``\\pL``, ``\\Q...\\E``, ``{,3}``, ``\\z``, ``(?U)``, unknown escapes...)
yields no clauses: the pattern is then matched against every record,
slower and never wrong.  RE2 reads a pattern as UTF-8 and Python as
bytes, so a non-ASCII byte ends a literal (``é?`` makes the whole
character optional in RE2, one byte of it in Python).  With case folding (``(?i)``), RE2 also folds
some ASCII letters to non-ASCII ones (``k`` and the Kelvin sign, ``s`` and
the long s), so folded literals holding those give no clause either.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from re import _constants as _sre  # type: ignore[attr-defined]
from re import _parser as _sre_parse  # type: ignore[attr-defined]
from typing import Any

__all__ = ["Required", "required", "whitelisted"]

Clause = tuple[bytes, ...]

# escapes both engines read alike (a backslash before any other
# non-alphanumeric byte is that byte, in both)
_SAFE_ESCAPES = frozenset(b"dDwWsSbBAntfrv")
_UNSAFE_FOLD = re.compile(rb"[kKsS\x80-\xff]+")  # RE2 folds k, s to non-ASCII letters too
_REPEATS = {_sre.MAX_REPEAT, _sre.MIN_REPEAT, _sre.POSSESSIVE_REPEAT}


@dataclass(frozen=True)
class Required:
    """What every match contains: ``clauses`` (AND of ORs of literals),
    compared case-insensitively (ASCII) when ``fold``."""

    clauses: tuple[Clause, ...] = ()
    fold: bool = False

    def longest(self) -> bytes:
        """The longest literal that is a clause on its own (b"" if none)."""
        singles = [c[0] for c in self.clauses if len(c) == 1]
        return max(singles, key=len, default=b"")


def whitelisted(pattern: bytes) -> bool:
    """Does ``pattern`` use only syntax Python's parser reads as RE2 does?"""
    i, n = 0, len(pattern)
    in_class = False
    while i < n:
        c = pattern[i]
        if c == 0x5C:  # backslash
            if i + 1 >= n:
                return False
            e = pattern[i + 1]
            if e == 0x78:  # \xHH: RE2 reads it as a code point, so ASCII only
                if not re.fullmatch(rb"[0-7][0-9A-Fa-f]", pattern[i + 2 : i + 4]):
                    return False
                i += 4
                continue
            if chr(e).isalnum() and e not in _SAFE_ESCAPES or e >= 0x80:
                return False
            if in_class and e in b"bB":
                return False  # [\b] is backspace in Python, an error in RE2
            i += 2
            continue
        if in_class:
            if c == 0x5B and pattern[i + 1 : i + 2] in (b":", b".", b"="):
                return False  # [[:alpha:]] and friends
            if c == 0x5D:
                in_class = False
            i += 1
            continue
        if c == 0x5B:  # [
            in_class = True
            i += 1
            if pattern[i : i + 1] == b"^":
                i += 1
            if pattern[i : i + 1] == b"]":
                i += 1  # a leading ] is a literal in both
            continue
        if c == 0x7B and pattern[i + 1 : i + 2] == b",":  # {,n}: RE2 reads it as text
            return False
        if c == 0x28 and pattern[i + 1 : i + 2] == b"?":  # (?...)
            if not re.match(rb"\(\?(?:[ims]*(?:-[ims]*)?[:)]|P<[A-Za-z_][A-Za-z0-9_]*>)", pattern[i:]):
                return False
        i += 1
    return not in_class


def required(pattern: bytes) -> Required:
    """The clauses every match of ``pattern`` (valid RE2) satisfies; no
    clauses when nothing is known (see the module docstring)."""
    if not whitelisted(pattern):
        return Required()
    try:
        parsed = _sre_parse.parse(pattern, 0)
    except Exception:  # noqa: BLE001 - any parse failure: know nothing
        return Required()
    fold = bool(parsed.state.flags & re.IGNORECASE) or _has_scoped_fold(parsed)
    try:
        clauses = _clauses(list(parsed), fold)
    except _Unknown:
        return Required()
    if fold:
        clauses = _fold_safe(clauses)
    return Required(tuple(_dedup(clauses)), fold)


def _fold_safe(clauses: list[Clause]) -> list[Clause]:
    """Folded clauses an ASCII-lowercased search can rely on: each literal
    cut to the pieces between bytes RE2 may fold to non-ASCII (a piece of a
    required literal is required too), lowercased."""
    out: list[Clause] = []
    for clause in clauses:
        pieces = [[p.lower() for p in _UNSAFE_FOLD.split(lit) if p] for lit in clause]
        if len(clause) == 1:
            out.extend((p,) for p in pieces[0])
        elif all(pieces):
            out.append(tuple(max(p, key=len) for p in pieces))
    return out


class _Unknown(Exception):
    """An op the walk does not know: give up on the whole pattern."""


def _has_scoped_fold(items: Any) -> bool:
    for op, av in items:
        if op is _sre.SUBPATTERN:
            if av[1] & re.IGNORECASE or _has_scoped_fold(av[3]):
                return True
        elif op in _REPEATS and _has_scoped_fold(av[2]):
            return True
        elif op is _sre.BRANCH and any(_has_scoped_fold(b) for b in av[1]):
            return True
        elif op is _sre.ATOMIC_GROUP and _has_scoped_fold(av):
            return True
    return False


def _clauses(items: list[tuple[Any, Any]], fold: bool) -> list[Clause]:
    """Clauses of a sequence: runs of literal bytes, and the clauses of
    every item that must occur."""
    out: list[Clause] = []
    run = bytearray()

    def close() -> None:
        if run:
            out.append((bytes(run),))
            run.clear()

    for op, av in items:
        if op is _sre.LITERAL and av < 0x80:
            run.append(av)
            continue
        if op is _sre.LITERAL:  # a byte of a UTF-8 character: RE2 sees the whole
            close()  # character (é? makes all of it optional), Python one byte
            continue
        if op is _sre.SUBPATTERN:
            inner = list(av[3])
            # a plain group continues the run of literals around it
            if all(o is _sre.LITERAL and a < 0x80 for o, a in inner):
                run.extend(a for _, a in inner)
                continue
            close()
            out.extend(_clauses(inner, fold))
            continue
        close()
        if op in _REPEATS:
            lo, _hi, child = av
            if lo >= 1:
                out.extend(_clauses(list(child), fold))
        elif op is _sre.BRANCH:
            clause = _branch_clause(av[1], fold)
            if clause:
                out.append(clause)
        elif op is _sre.ATOMIC_GROUP:
            out.extend(_clauses(list(av), fold))
        elif op in (_sre.ANY, _sre.IN, _sre.NOT_LITERAL, _sre.AT, _sre.CATEGORY,
                    _sre.ASSERT, _sre.ASSERT_NOT, _sre.GROUPREF, _sre.GROUPREF_EXISTS):
            pass  # no literal of its own (lookarounds and refs never pass RE2 anyway)
        else:
            raise _Unknown(op)
    close()
    return out


def _branch_clause(branches: list[Any], fold: bool) -> Clause:
    """One clause for ``A|B|...``: the best literal of each branch, or
    nothing if some branch promises no literal."""
    picks: list[bytes] = []
    for branch in branches:
        singles = [c[0] for c in _clauses(list(branch), fold) if len(c) == 1]
        if not singles:
            return ()
        picks.append(max(singles, key=len))
    return tuple(dict.fromkeys(picks))


def _dedup(clauses: list[Clause]) -> list[Clause]:
    seen: dict[Clause, None] = {}
    for c in clauses:
        if c and all(c):
            seen.setdefault(c, None)
    return list(seen)
