"""Batch SQL in few shapes: multi-row INSERTs, and outbox deletes and updates by id.

sqlite3 keeps prepared statements in a small cache keyed by SQL text (128 by default). One
text per batch size would be prepared almost every time and push the others out, so a batch
is cut into statements of a fixed number of rows and a remainder in power-of-two sizes: a
table has at most ``1 + log2(chunk)`` INSERT texts, the outbox ``1 + log2(DELETE_BUCKET)``
DELETE texts and as many UPDATE texts. Rows go in in their order, so rowids follow it as
with one row per statement.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from itertools import chain
from typing import Any

DELETE_BUCKET = 512
"""Ids one outbox DELETE binds at most (under SQLite's old default of 999 variables)."""


@dataclass(frozen=True, slots=True)
class Insert:
    """An INSERT of ``ncols`` values per row; ``head`` is everything before ``VALUES``."""

    head: str
    ncols: int

    @property
    def one(self) -> str:
        """The statement for one row."""
        return _values(self.head, self.ncols, 1)

    def chunk(self, rows: int, var_limit: int) -> int:
        """Rows per statement: ``rows``, fewer if SQLite binds fewer than ``var_limit``
        variables; at least 1."""
        return max(1, min(rows, var_limit // self.ncols))


@cache
def _values(head: str, ncols: int, n: int) -> str:
    row = "(" + ", ".join("?" * ncols) + ")"
    return f"{head} VALUES {', '.join([row] * n)}"


def insert_rows(
    conn: sqlite3.Connection, ins: Insert, rows: Iterable[Sequence[Any]], chunk: int
) -> int:
    """Insert ``rows`` in order, ``chunk`` rows per statement (1: one ``executemany`` row by
    row); returns the rows changed (an ``OR IGNORE`` duplicate is not one)."""
    if chunk <= 1:
        return conn.executemany(ins.one, rows).rowcount
    width = ins.ncols
    flat = list(chain.from_iterable(rows))
    n, odd = divmod(len(flat), width)
    if odd:  # the values would shift into the wrong columns
        raise sqlite3.ProgrammingError(f"{ins.head}: a row does not have {width} values")
    step = chunk * width
    full = n // chunk * step
    changed = 0
    if full:
        sql = _values(ins.head, width, chunk)
        changed += conn.executemany(
            sql, (flat[i : i + step] for i in range(0, full, step))
        ).rowcount
    start, rest = full, n % chunk
    while rest:  # 127 rows: 64 + 32 + 16 + 8 + 4 + 2 + 1
        k = 1 << (rest.bit_length() - 1)
        end = start + k * width
        changed += conn.execute(_values(ins.head, width, k), flat[start:end]).rowcount
        start, rest = end, rest - k
    return changed


@cache
def ids_in(n: int) -> str:
    """``WHERE id IN (?, ...)`` for ``n`` ids (one text per bucket size of ``id_buckets``)."""
    return f"WHERE id IN ({', '.join('?' * n)})"


@cache
def _delete_sql(n: int) -> tuple[str, str]:
    where = ids_in(n)
    count = f"SELECT count(*), coalesce(sum(length(payload)), 0) FROM outbox {where}"
    return count, f"DELETE FROM outbox {where}"


def id_buckets(ids: Sequence[int], exact: bool = False) -> Iterator[list[int]]:
    """``ids`` in lists of up to ``DELETE_BUCKET``, each padded to a power of two by repeating
    its last id (a row matches once however often its id is listed); ``exact``: 500 ids a
    list, as they are (one SQL text per list size)."""
    bucket = 500 if exact else DELETE_BUCKET
    for i in range(0, len(ids), bucket):
        chunk = list(ids[i : i + bucket])
        if not exact:
            chunk += chunk[-1:] * ((1 << (len(chunk) - 1).bit_length()) - len(chunk))
        yield chunk


def delete_outbox(
    conn: sqlite3.Connection, ids: Sequence[int], *, exact: bool = False
) -> tuple[int, int]:
    """Delete outbox rows by id; returns (rows deleted, their payload bytes).

    Up to ``DELETE_BUCKET`` ids per statement (see ``id_buckets``); ``exact`` is the former
    shape, kept to compare.
    """
    deleted = size = 0
    for chunk in id_buckets(ids, exact):
        count, delete = _delete_sql(len(chunk))
        n, total = conn.execute(count, chunk).fetchone()
        conn.execute(delete, chunk)
        deleted += n
        size += total
    return deleted, size


def count_attempt(conn: sqlite3.Connection, ids: Sequence[int]) -> int:
    """One more failed delivery attempt on each outbox row of ``ids``, in the buckets of
    ``delete_outbox``; returns the rows changed (an id listed twice counts once)."""
    changed = 0
    for chunk in id_buckets(ids):
        changed += conn.execute(_attempt_sql(len(chunk)), chunk).rowcount
    return changed


@cache
def _attempt_sql(n: int) -> str:
    return f"UPDATE outbox SET attempts = attempts + 1 {ids_in(n)}"
