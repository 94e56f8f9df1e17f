"""The embedded search adapter: SQLite FTS5 in its own database file, ``data_dir/search.db``.

Why a file of its own: SQLite lets one writer in at a time per database. Indexing a large batch holds
that writer for a while, and in the metadata DB it would stall every key, tenant and outbox write.
In ``search.db`` (its own WAL, its own writer and readers) it stalls only other indexing. Nothing in
it needs a transaction shared with the metadata DB: tenant deletion reaches it through a purger.

Each index is a "generation" of four tables, numbered N (the number, not user text, names them):

* ``ixN_docs``: the stored documents (``body``: the JSON bytes as sent), a typed column ``fK`` per
  filterable field holding its value when it is a scalar (NULL for a list), a column ``sK`` per
  sortable field and ``xK`` (the exact-match key) per searchable field;
* ``ixN_fts``: a contentless FTS5 table (``content=''``), one column per searchable field,
  ``unicode61 remove_diacritics 2``: the texts are not stored a second time, they are derived from
  the body again to delete a row (FTS5's delete command) or to highlight hits (:class:`_Marker`);
* ``ixN_attrs``: (field number, value, doc) for each value of a filterable field that holds a list,
  read by filters and facets through its two indexes; most documents need no rows here;
* ``ixN_kinds``: per filterable field, whether any document gave it a scalar, a list, or both, so a
  facet query reads only the places its values can be.

Changing an index's settings builds a new generation from the stored bodies and drops the old one in
the same transaction, so searches see either the old or the new index, never a mix.

Writes go through a task queue drained by one background worker per process; consecutive tasks of
an index are applied in one transaction (batched), in order. The queue (table ``tasks``) lives in a
sibling file, ``search-queue.db``: accepting documents then never waits for the indexing
transaction in progress, so requests keep arriving (and batches keep growing) while it runs. A batch
is marked done after its index transaction commits; a crash in between applies it again on restart,
which changes nothing (whole documents replaced by id, deletions of ids, in queue order).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import re
import sqlite3
import time
import unicodedata
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import msgspec

from appliance.core.context import BackendStatus
from appliance.core.db import Database, Migration, Row, Tx
from appliance.core.errors import NotFound, ServiceUnavailable
from appliance.core.ids import new_id
from appliance.search import (
    IndexDefinition,
    IndexInfo,
    SearchQuery,
    SearchResult,
    Task,
    TaskKind,
)
from appliance.search.filters import SqlField, fields_of, sql_value, to_sql

__all__ = ["SqliteFtsEngine", "match_expression"]

log = logging.getLogger(__name__)

MAX_QUERY_WORDS = 32
MAX_FACET_VALUES = 100
BATCH_DOCUMENTS = 20_000  # per transaction: fewer commits, each B-tree page rewritten once for more rows
BATCH_TASKS = 100
_WRITE_CHUNK = 1_024  # a power of two: a chunk's documents go in one statement
_MAX_STATEMENT_ROWS = 1_024  # rows per multi-row INSERT (its SQL text grows with them)
_REGISTRY_TTL_S = 2.0
# The indexing connection: a page cache that holds the B-tree and FTS pages a batch rewrites, rather
# than reading them back from the file. (A checkpoint every 64 MiB of WAL instead of 4 MiB saved a
# little more indexing CPU, but made searches after a large import about a tenth slower: not kept.)
_WRITER_PRAGMAS = ("PRAGMA cache_size = -65536",)
INLINE_BUDGET_S = 0.002  # a search running longer than this on the event loop moves to the readers
_WORD = re.compile(r"[^\W_]", re.UNICODE)
_WORDS = re.compile(r"[^\W_]+", re.UNICODE)
MAX_EXACT_CHARS = 100  # longer fields are prose: an exact match of the whole of one is not a signal
EXACT_BONUS = 1000.0

# The indexing task queue: in search.db up to search#1, in its own file (search-queue.db) since.
_TASKS_DDL = """
        CREATE TABLE tasks (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,
            tenant_id TEXT NOT NULL,
            index_name TEXT NOT NULL,
            kind TEXT NOT NULL,
            status TEXT NOT NULL,
            documents INTEGER NOT NULL,
            payload BLOB,
            error TEXT,
            enqueued_at REAL NOT NULL,
            started_at REAL,
            finished_at REAL
        );
        CREATE INDEX tasks_queued ON tasks (status, seq);
        CREATE INDEX tasks_by_index ON tasks (tenant_id, index_name, seq);
        """

_MIGRATIONS = [
    Migration(
        "search",
        1,
        "index registry and task queue",
        """
        CREATE TABLE indexes (
            tenant_id TEXT NOT NULL,
            name TEXT NOT NULL,
            generation INTEGER NOT NULL,
            definition BLOB NOT NULL,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            PRIMARY KEY (tenant_id, name)
        );
        CREATE TABLE generations (id INTEGER PRIMARY KEY AUTOINCREMENT, created_at REAL NOT NULL);
        """
        + _TASKS_DDL,
    ),
    Migration(
        "search",
        2,
        "typed filter columns: indexes remember their table layout, older ones are rebuilt at start",
        "ALTER TABLE indexes ADD COLUMN layout INTEGER NOT NULL DEFAULT 1;",
    ),
]
_QUEUE_MIGRATIONS = [
    Migration(
        "search-queue",
        1,
        "indexing tasks (moved from search.db, where version 1 kept them)",
        _TASKS_DDL,
    )
]
_TASK_COLUMNS = "seq, id, tenant_id, index_name, kind, status, documents, payload, error, enqueued_at, started_at, finished_at"
LAYOUT = 3  # 1: every filterable value in the attributes table; 2: typed columns, lists in attributes;
# 3: a contentless FTS5 table (the texts are derived from the stored bodies, not stored twice)
_TOKENIZE = "tokenize = 'unicode61 remove_diacritics 2'"

_RAW_DOCS_DECODER = msgspec.json.Decoder(list[msgspec.Raw])
_MISSING: Any = msgspec.UNSET
_DEF_DECODER = msgspec.json.Decoder(IndexDefinition)
_IDS_DECODER = msgspec.json.Decoder(list[str])


def match_expression(q: str) -> str:
    """The FTS5 MATCH text for a user's query: every word must match, the last one as a prefix.

    Each whitespace-separated chunk becomes one quoted FTS5 string (``"`` doubled inside), so quotes,
    ``AND``, ``NEAR``, ``(``, ``*`` and ``:`` are searched for as text, never parsed as syntax. Chunks
    without a letter or digit are dropped; an empty result means "no text condition".
    """
    chunks = [c for c in q.replace("\x00", " ").split() if _WORD.search(c)][:MAX_QUERY_WORDS]
    if not chunks:
        return ""
    quoted = ['"' + c.replace('"', '""') + '"' for c in chunks]
    quoted[-1] += "*"
    return " ".join(quoted)


def exact_key(text: str) -> str:
    """A text's words, case- and accent-folded, space-separated: equal keys mean an exact match."""
    folded = text.casefold()
    if not folded.isascii():
        folded = "".join(c for c in unicodedata.normalize("NFKD", folded) if not unicodedata.combining(c))
    return " ".join(_WORDS.findall(folded))


def _weights(count: int) -> list[float]:
    """Earlier searchable fields weigh more: 2^(n-1-i), capped so no field is ignored."""
    return [float(2 ** min(count - 1 - i, 6)) for i in range(count)]


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, list):
        return " ".join(t for t in (_text(v) for v in value) if t)
    if isinstance(value, dict):
        return " ".join(t for t in (_text(v) for v in value.values()) if t)
    return ""


def _sort_value(value: Any) -> Any:
    if isinstance(value, list):
        value = next((v for v in value if isinstance(v, str | int | float)), None)
    return sql_value(value) if isinstance(value, str | int | float) else None


_INT64 = (-(2**63), 2**63)
_SCALARS = (str, int, float)  # bool is an int


def _scalar(value: Any) -> Any:
    """A filterable scalar as stored: see :func:`appliance.search.filters.sql_value`."""
    kind = type(value)
    if kind is str or kind is float:
        return value
    if kind is int:
        return value if _INT64[0] <= value < _INT64[1] else float(value)
    if kind is bool:
        return "true" if value else "false"
    return sql_value(value) if isinstance(value, str | int | float) else None


def _facet_key(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


@functools.cache
def _variable_limit() -> int:
    """How many ``?`` one statement may hold in the SQLite library in use (999 before 3.32)."""
    with contextlib.closing(sqlite3.connect(":memory:")) as conn:
        return conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)


class _Insert:
    """A multi-row ``INSERT ... VALUES (...), (...)`` of one table, split into statements of a
    power-of-two number of rows (so a handful of SQL texts serve every batch, from the statement cache)."""

    def __init__(self, head: str, width: int, constants: str = "") -> None:
        self.head = head
        self.width = width  # values per row (after the ``constants``, SQL text that starts each row)
        self._row = "(" + constants + ", ".join("?" * width) + ")"
        limit = max(1, min(_MAX_STATEMENT_ROWS, _variable_limit() // width))
        self.most = 1 << (limit.bit_length() - 1)  # the largest power of two within the limit
        self._sql: dict[int, str] = {}

    def sql(self, rows: int) -> str:
        text = self._sql.get(rows)
        if text is None:
            text = self._sql[rows] = f"{self.head} VALUES {', '.join([self._row] * rows)}"
        return text

    def statements(self, values: list[Any]) -> Iterator[tuple[str, list[Any]]]:
        """(SQL, parameters) inserting the rows whose values ``values`` holds one after another."""
        rows, start, size = len(values) // self.width, 0, self.most
        while rows:
            while size > rows:
                size >>= 1
            end = start + size * self.width
            yield self.sql(size), values[start:end]
            rows, start = rows - size, end


class _Generation:
    """The physical tables of one index generation, and the statements that fill them."""

    def __init__(self, number: int, definition: IndexDefinition) -> None:
        self.number = number
        self.definition = definition
        self.docs = f"ix{number}_docs"
        self.fts = f"ix{number}_fts"
        self.attrs = f"ix{number}_attrs"
        self.kinds = f"ix{number}_kinds"
        self.fields = {f: SqlField(f"f{i}", i) for i, f in enumerate(definition.filterable)}
        sort_cols = [f"s{i}" for i in range(len(definition.sortable))]
        self.sort_column = dict(zip(definition.sortable, sort_cols, strict=True))
        self.exact_columns = [f"x{i}" for i in range(len(definition.searchable))]
        filter_cols = [f.column for f in self.fields.values()]
        self.columns = [*filter_cols, *sort_cols, *self.exact_columns]
        fts_cols = [f"c{i}" for i in range(len(definition.searchable))]
        self.insert_doc = _Insert(
            f"INSERT INTO {self.docs} (rowid, doc_id{''.join(', ' + c for c in self.columns)}, body)",
            len(self.columns) + 3,
        )
        self.insert_fts = _Insert(f"INSERT INTO {self.fts} (rowid, {', '.join(fts_cols)})", len(fts_cols) + 1)
        # FTS5's delete command: a row of the contentless table goes by its rowid and indexed texts
        self.delete_fts = _Insert(
            f"INSERT INTO {self.fts} ({self.fts}, rowid, {', '.join(fts_cols)})",
            len(fts_cols) + 1,
            "'delete', ",
        )
        self.insert_attr = _Insert(f"INSERT OR IGNORE INTO {self.attrs} (field, value, doc)", 3)
        weights = ", ".join(repr(w) for w in _weights(len(definition.searchable)))
        self.bm25 = f"bm25({self.fts}, {weights})"

    @functools.cached_property
    def _reading(self) -> tuple[msgspec.json.Decoder[Any], list[int], list[tuple[int, int]], list[int]]:
        """A decoder of a document straight into a struct of the fields the index reads (the rest of
        the JSON is skipped, not built; ``v0`` is the primary key, then each distinct field once), and
        the positions in it of the searchable, the (filterable, field number) and the sortable fields."""
        definition = self.definition
        names = list(dict.fromkeys([definition.primary_key, *definition.searchable,
                                    *definition.filterable, *definition.sortable]))  # fmt: skip
        position = {name: i for i, name in enumerate(names)}
        struct = msgspec.defstruct(
            "IndexedFields",
            [(f"v{i}", Any, _MISSING if i == 0 else None) for i in range(len(names))],
            rename={f"v{i}": name for i, name in enumerate(names)},
            gc=False,  # decoded JSON holds no cycles; untracked, a batch's documents trigger no collections
        )
        return (
            msgspec.json.Decoder(struct),
            [position[f] for f in definition.searchable],
            [(position[f], self.fields[f].number) for f in definition.filterable],
            [position[f] for f in definition.sortable],
        )

    @property
    def decoder(self) -> msgspec.json.Decoder[Any]:
        return self._reading[0]

    def ddl(self) -> list[str]:
        # No FTS5 prefix indexes: measured on the benchmark corpus they slow indexing by about 1.5x
        # and do not speed up a ranked top-20 prefix query (ranking the matches dominates).
        columns = "".join(f", {c}" for c in self.columns)
        fts_cols = ", ".join(f"c{i}" for i in range(len(self.definition.searchable)))
        statements = [
            # body last: a scan that tests the typed columns decodes only the start of each record
            f"CREATE TABLE {self.docs} (rowid INTEGER PRIMARY KEY, doc_id TEXT NOT NULL UNIQUE{columns},"
            " body BLOB NOT NULL)",
            # Contentless: the texts are in the stored bodies already; see :meth:`remove` and :class:`_Marker`.
            f"CREATE VIRTUAL TABLE {self.fts} USING fts5({fts_cols}, content = '', {_TOKENIZE})",
            f"CREATE TABLE {self.attrs} (field INTEGER NOT NULL, value, doc INTEGER NOT NULL,"
            " PRIMARY KEY (field, value, doc)) WITHOUT ROWID",
            f"CREATE INDEX {self.attrs}_doc ON {self.attrs} (doc, field, value)",
            # Per filterable field: whether any document ever gave it a scalar, or a list with values.
            # Only ever set, never cleared: a facet query reads just the places a field's values are.
            f"CREATE TABLE {self.kinds} (field INTEGER PRIMARY KEY, scalars INTEGER NOT NULL,"
            " lists INTEGER NOT NULL)",
        ]
        statements += [
            f"CREATE INDEX {self.docs}_{c} ON {self.docs} ({c})" for c in self.sort_column.values()
        ]
        return statements

    def drop(self) -> list[str]:
        return [f"DROP TABLE IF EXISTS {t}" for t in (self.fts, self.attrs, self.kinds, self.docs)]

    @functools.cached_property
    def _key_decoder(self) -> msgspec.json.Decoder[Any]:
        key = msgspec.defstruct(
            "PrimaryKey", [("v0", Any, _MISSING)], rename={"v0": self.definition.primary_key}, gc=False
        )
        return msgspec.json.Decoder(key)

    def doc_id(self, body: bytes | msgspec.Raw) -> str:
        """The document id of a queued document (its other fields are skipped, decoded later by
        :meth:`write`, chunk by chunk, while the previous chunk is being inserted)."""
        pk = self._key_decoder.decode(body).v0
        if pk is _MISSING:  # queued before the primary key changed
            raise ValueError(f"a document has no {self.definition.primary_key!r}, the index's primary key")
        return pk if type(pk) is str else str(pk)

    async def write(self, tx: Tx, docs: Sequence[tuple[int, str, Any]]) -> None:
        """Insert (rowid, doc id, JSON body) rows: documents, FTS and list values.

        A filterable scalar goes into the field's typed column; each value of a list goes into the
        attributes table (the column stays NULL), so most documents need no attribute rows at all.
        Rows are built (bodies decoded) a chunk at a time, each chunk's statements handed to the
        database thread before the next is built, so building (Python) and inserting (SQLite)
        overlap. Each statement inserts many rows (multi-row ``VALUES``): SQLite then runs a whole
        chunk in a few steps with the GIL released, where ``executemany`` would take the GIL back for
        every row, and wait for it whenever this thread is busy building the next chunk.
        """
        scalars: set[int] = set()
        lists: set[int] = set()
        pending: list[asyncio.Future[int]] = []
        try:
            for start in range(0, len(docs), _WRITE_CHUNK):
                chunk = self._rows(docs[start : start + _WRITE_CHUNK], scalars, lists)
                for insert, values in zip(
                    (self.insert_doc, self.insert_fts, self.insert_attr), chunk, strict=True
                ):
                    # Scheduled in order, they queue their statements in order on the database thread.
                    for sql, params in insert.statements(values):
                        # execute, not executemany: it closes its cursor on the database thread. A
                        # cursor left to the garbage collector resets its (cached, shared) statement
                        # from this thread, racing the next use of that statement: "API misuse".
                        pending.append(asyncio.ensure_future(tx.execute(sql, params)))
                await asyncio.sleep(0)  # let them submit their statements
            await asyncio.gather(*pending)
        except BaseException:
            await asyncio.gather(*pending, return_exceptions=True)
            raise
        if scalars or lists:
            await tx.executemany(
                f"INSERT INTO {self.kinds} (field, scalars, lists) VALUES (?, ?, ?) ON CONFLICT (field)"
                " DO UPDATE SET scalars = max(scalars, excluded.scalars), lists = max(lists, excluded.lists)",
                [(n, int(n in scalars), int(n in lists)) for n in sorted(scalars | lists)],
            )

    def _rows(
        self, docs: Sequence[tuple[int, str, Any]], scalars: set[int], lists: set[int]
    ) -> tuple[list[Any], list[Any], list[Any]]:
        """The docs, FTS and attribute rows of ``docs``, each kind's values one flat list (row after
        row: few objects for the garbage collector to track); notes which fields got scalars and lists."""
        doc_values: list[Any] = []
        fts_values: list[Any] = []
        attr_values: list[Any] = []
        add_doc, add_fts, add_attr = doc_values.extend, fts_values.extend, attr_values.extend
        decoder, text_at, filter_at, sort_at = self._reading
        decode, astuple = decoder.decode, msgspec.structs.astuple
        for rowid, doc_id, body in docs:
            values = astuple(decode(body))
            texts = [v if type(v) is str else _text(v) for v in [values[i] for i in text_at]]  # see texts()
            add_doc((rowid, doc_id))
            for at, number in filter_at:
                value = values[at]
                if type(value) is list:
                    doc_values.append(None)
                    before = len(attr_values)
                    for item in value:
                        if type(item) is str:
                            add_attr((number, item, rowid))
                        elif isinstance(item, _SCALARS):
                            add_attr((number, _scalar(item), rowid))
                    if len(attr_values) > before:
                        lists.add(number)
                else:
                    value = _scalar(value)
                    doc_values.append(value)
                    if value is not None:
                        scalars.add(number)
            add_doc([_sort_value(values[i]) for i in sort_at])
            add_doc([exact_key(t) if len(t) <= MAX_EXACT_CHARS else None for t in texts])
            doc_values.append(body)
            fts_values.append(rowid)
            add_fts(texts)
        return doc_values, fts_values, attr_values

    def texts(self, body: bytes | str) -> list[str]:
        """The searchable fields' texts of a stored document, exactly as :meth:`_rows` indexed them."""
        values = msgspec.structs.astuple(self.decoder.decode(body))
        return [v if type(v) is str else _text(v) for v in [values[i] for i in self._reading[1]]]

    async def remove(self, tx: Tx, rowids: list[int]) -> None:
        """Delete documents and their FTS and attribute rows.

        The FTS5 table is contentless, so a row is deleted by repeating the texts it was indexed
        with, derived again from the stored body: the derivation (:meth:`texts`) must never change
        within a layout (a change needs a new ``LAYOUT``, which rebuilds every index at start).
        """
        for start in range(0, len(rowids), 500):
            chunk = rowids[start : start + 500]
            marks = ", ".join("?" for _ in chunk)
            rows = await tx.fetchall(f"SELECT rowid, body FROM {self.docs} WHERE rowid IN ({marks})", chunk)
            deletions: list[Any] = []
            for row in rows:
                deletions.append(row["rowid"])
                deletions.extend(self.texts(row["body"]))
            for sql, params in self.delete_fts.statements(deletions):
                await tx.execute(sql, params)
            for table, column in ((self.attrs, "doc"), (self.docs, "rowid")):
                await tx.execute(f"DELETE FROM {table} WHERE {column} IN ({marks})", chunk)


class SqliteFtsEngine:
    """The ``SearchEngine`` port on SQLite FTS5 (see the module docstring for the layout)."""

    backend = "sqlite-fts5"
    mode: Literal["embedded", "server"] = "embedded"

    def __init__(
        self, path: Path | str, readers: int = 2, worker: bool = True, inline_steps: int = 1000
    ) -> None:
        """``worker=False`` runs no background indexer: the caller applies tasks with :meth:`drain`.
        ``inline_steps``: SQLite VM steps between two checks of a search's inline time budget."""
        self.db = Database(path, readers=readers)
        path = Path(path)
        self.queue = Database(path.with_name(f"{path.stem}-queue{path.suffix}"), readers=1)
        self._run_worker = worker
        # (tenant, index) -> (expires, generation, index): spares searches a registry read. An entry
        # made stale by another process is harmless: its tables are gone, the search looks again.
        self._registry: dict[tuple[str, str], tuple[float, _Generation, IndexInfo]] = {}
        self._wake = asyncio.Event()
        self._progress = asyncio.Condition()
        self._worker: asyncio.Task[None] | None = None
        self._inline: sqlite3.Connection | None = None
        self._inline_deadline = 0.0
        self.inline_budget = INLINE_BUDGET_S
        self._inline_steps = inline_steps
        self.moved_to_readers = 0  # searches that ran out of their inline budget
        self._marker = _Marker()

    # --- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        await self.db.open()
        for pragma in _WRITER_PRAGMAS:
            cursor = await self.db.writer.execute(pragma)
            await cursor.close()
        await self.db.migrate(_MIGRATIONS)
        await self.queue.open()
        await self.queue.migrate(_QUEUE_MIGRATIONS)
        await self._move_old_queue()
        await self._upgrade_layouts()
        self._inline = sqlite3.connect(self.db.path, isolation_level=None, check_same_thread=False)
        self._inline.row_factory = sqlite3.Row
        self._inline.execute("PRAGMA query_only=ON")
        self._inline.execute("PRAGMA busy_timeout=250")
        self._inline.set_progress_handler(self._out_of_time, self._inline_steps)
        # After a crash, the tasks of a batch not marked done are still "enqueued": applied again here.
        if self._run_worker:
            self._worker = asyncio.create_task(self._work(), name="search-indexer")

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        if self._inline is not None:
            self._inline.close()
            self._inline = None
        self._marker.close()
        await self.queue.close()
        await self.db.close()

    async def health(self) -> BackendStatus:
        try:
            row = await self.queue.fetchone(
                "SELECT sqlite_version() AS v, (SELECT count(*) FROM tasks WHERE status = 'enqueued') AS q"
            )
            await self.db.fetchone("SELECT 1 FROM indexes LIMIT 1")
        except (RuntimeError, sqlite3.Error) as exc:
            return BackendStatus(
                name="search",
                backend=self.backend,
                mode=self.mode,
                ok=False,
                detail=f"search.db is not usable: {exc}; check the data dir's permissions and free space",
            )
        assert row is not None
        alive = not self._run_worker or (self._worker is not None and not self._worker.done())
        return BackendStatus(
            name="search",
            backend=self.backend,
            mode=self.mode,
            ok=alive,
            version=row["v"],
            detail=f"{row['q']} indexing tasks queued" if alive else "the indexing worker stopped; restart",
        )

    # --- indexes --------------------------------------------------------------------------------

    async def put_index(self, tenant: str, name: str, definition: IndexDefinition) -> tuple[IndexInfo, bool]:
        try:
            return await self._put_index(tenant, name, definition)
        finally:
            self._forget(tenant, name)  # after the commit, so no search re-caches the old settings

    async def _put_index(self, tenant: str, name: str, definition: IndexDefinition) -> tuple[IndexInfo, bool]:
        now = time.time()
        async with self.db.transaction() as tx:
            row = await tx.fetchone(
                "SELECT generation, definition, created_at, updated_at FROM indexes"
                " WHERE tenant_id = ? AND name = ?",
                (tenant, name),
            )
            if row is not None and _DEF_DECODER.decode(row["definition"]) == definition:
                return _info(name, definition, row["created_at"], row["updated_at"]), False
            new = await self._create_generation(tx, definition)
            if row is None:
                await tx.execute(
                    "INSERT INTO indexes (tenant_id, name, generation, definition, created_at, updated_at, layout)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (tenant, name, new.number, msgspec.json.encode(definition), now, now, LAYOUT),
                )
                return _info(name, definition, now, now), True
            await self._replace_generation(tx, tenant, name, row["generation"], new)
            await tx.execute(
                "UPDATE indexes SET updated_at = ? WHERE tenant_id = ? AND name = ?", (now, tenant, name)
            )
            return _info(name, definition, row["created_at"], now), False

    async def _replace_generation(
        self, tx: Tx, tenant: str, name: str, number: int, new: _Generation
    ) -> None:
        """Fill ``new`` from generation ``number`` of the index, drop that one, point the index at ``new``."""
        old = _Generation(number, new.definition)  # only its table names and stored bodies are read
        await _copy(tx, old, new)
        for statement in old.drop():
            await tx.execute(statement)
        await tx.execute(
            "UPDATE indexes SET generation = ?, definition = ?, layout = ? WHERE tenant_id = ? AND name = ?",
            (new.number, msgspec.json.encode(new.definition), LAYOUT, tenant, name),
        )

    async def _upgrade_layouts(self) -> None:
        """Rebuild the indexes an older version laid out differently, from their stored documents."""
        while True:
            async with self.db.transaction() as tx:
                row = await tx.fetchone(
                    "SELECT tenant_id, name, generation, definition FROM indexes WHERE layout < ? LIMIT 1",
                    (LAYOUT,),
                )
                if row is None:
                    return
                new = await self._create_generation(tx, _DEF_DECODER.decode(row["definition"]))
                await self._replace_generation(tx, row["tenant_id"], row["name"], row["generation"], new)
            log.info("search: rebuilt index %s/%s in the current table layout", row["tenant_id"], row["name"])

    async def _create_generation(self, tx: Tx, definition: IndexDefinition) -> _Generation:
        await tx.execute("INSERT INTO generations (created_at) VALUES (?)", (time.time(),))
        number = await tx.fetchone("SELECT last_insert_rowid() AS n")
        assert number is not None
        generation = _Generation(int(number["n"]), definition)
        for statement in generation.ddl():
            await tx.execute(statement)
        return generation

    async def get_index(self, tenant: str, name: str, *, count: bool = True) -> IndexInfo | None:
        if not count:
            found = await self._lookup(tenant, name)
            return msgspec.structs.replace(found[1]) if found else None
        for _ in range(2):
            self._forget(tenant, name)
            found = await self._lookup(tenant, name)
            if found is None:
                return None
            try:
                rows = await self._read(f"SELECT count(*) AS n FROM {found[0].docs}", ())
            except _Reindexed:
                continue
            return msgspec.structs.replace(found[1], documents=int(rows[0]["n"]))
        raise ServiceUnavailable("the index is being re-indexed: retry")

    async def list_indexes(self, tenant: str, after: str, limit: int) -> list[IndexInfo]:
        rows = await self.db.fetchall(
            "SELECT * FROM indexes WHERE tenant_id = ? AND name > ? ORDER BY name LIMIT ?",
            (tenant, after, limit),
        )
        return [_row_info(r) for r in rows]

    async def delete_index(self, tenant: str, name: str) -> bool:
        async with self.db.transaction() as tx:
            deleted = await self._drop_index(tx, tenant, name)
        if deleted:
            await self.queue.execute(
                "UPDATE tasks SET status = 'failed', error = 'the index was deleted', payload = NULL,"
                " finished_at = ? WHERE tenant_id = ? AND index_name = ? AND status = 'enqueued'",
                (time.time(), tenant, name),
            )
            await self._notify()
        return deleted

    async def _drop_index(self, tx: Tx, tenant: str, name: str) -> bool:
        tx.after_commit(lambda: self._forget(tenant, name))
        row = await tx.fetchone(
            "SELECT generation, definition FROM indexes WHERE tenant_id = ? AND name = ?", (tenant, name)
        )
        if row is None:
            return False
        for statement in _Generation(row["generation"], _DEF_DECODER.decode(row["definition"])).drop():
            await tx.execute(statement)
        await tx.execute("DELETE FROM indexes WHERE tenant_id = ? AND name = ?", (tenant, name))
        return True

    async def purge_tenant(self, tenant: str) -> None:
        async with self.db.transaction() as tx:
            for row in await tx.fetchall("SELECT name FROM indexes WHERE tenant_id = ?", (tenant,)):
                await self._drop_index(tx, tenant, row["name"])
        await self.queue.execute("DELETE FROM tasks WHERE tenant_id = ?", (tenant,))
        await self._notify()

    # --- tasks ----------------------------------------------------------------------------------

    async def upsert(self, tenant: str, index: IndexInfo, documents: list[dict[str, Any]]) -> Task:
        return await self._enqueue(
            tenant, index.name, "documents.upsert", len(documents), msgspec.json.encode(documents)
        )

    async def upsert_json(self, tenant: str, index: IndexInfo, payload: bytes, count: int) -> Task:
        """Queue the JSON array as received: the worker stores each document's own bytes."""
        return await self._enqueue(tenant, index.name, "documents.upsert", count, payload)

    async def delete_document(self, tenant: str, index: IndexInfo, doc_id: str) -> Task:
        return await self._enqueue(tenant, index.name, "documents.delete", 1, msgspec.json.encode([doc_id]))

    async def _enqueue(self, tenant: str, index: str, kind: TaskKind, count: int, payload: bytes) -> Task:
        task = Task(
            task_id=new_id("task"),
            index=index,
            kind=kind,
            status="enqueued",
            documents=count,
            enqueued_at=time.time(),
        )
        await self.queue.execute(
            "INSERT INTO tasks (id, tenant_id, index_name, kind, status, documents, payload, enqueued_at)"
            " VALUES (?, ?, ?, ?, 'enqueued', ?, ?, ?)",
            (task.task_id, tenant, index, kind, count, payload, task.enqueued_at),
        )
        self._wake.set()
        return task

    async def task(self, tenant: str, index: str, task_id: str) -> Task | None:
        row = await self.queue.fetchone(
            "SELECT id, index_name, kind, status, documents, error, enqueued_at, started_at, finished_at"
            " FROM tasks WHERE id = ? AND tenant_id = ? AND index_name = ?",
            (task_id, tenant, index),
        )
        return _task(row) if row is not None else None

    async def wait(self, tenant: str, index: str, task_id: str, timeout: float) -> Task | None:
        deadline = time.monotonic() + timeout
        while True:
            async with self._progress:
                task = await self.task(tenant, index, task_id)
                remaining = deadline - time.monotonic()
                if task is None or task.finished or remaining <= 0:
                    return task
                # Woken by this process's worker; the 1 s bound catches another process's.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._progress.wait(), min(remaining, 1.0))

    async def _notify(self) -> None:
        async with self._progress:
            self._progress.notify_all()

    async def _work(self) -> None:
        while True:
            self._wake.clear()
            try:
                done = await self.drain()
            except Exception:  # keep the worker alive: the failure is recorded on the tasks
                log.exception("search indexing failed")
                done = 0
            if not done:
                await self._wake.wait()

    async def drain(self) -> int:
        """Apply the queued tasks of the oldest queued index, in one transaction; returns how many."""
        head = await self.queue.fetchone(
            "SELECT tenant_id, index_name FROM tasks WHERE status = 'enqueued' ORDER BY seq LIMIT 1"
        )
        if head is None:
            return 0
        tenant, index = head["tenant_id"], head["index_name"]
        rows = await self.queue.fetchall(
            "SELECT seq, documents FROM tasks WHERE tenant_id = ? AND index_name = ?"
            " AND status = 'enqueued' ORDER BY seq LIMIT ?",
            (tenant, index, BATCH_TASKS),
        )
        chosen: list[int] = []
        total = 0
        for row in rows:
            if chosen and total + row["documents"] > BATCH_DOCUMENTS:
                break
            chosen.append(row["seq"])
            total += row["documents"]
        if not chosen:  # taken by another process, or its tenant purged, since the head was read
            return 0
        # The payloads of the batch only (the queue may hold many more behind it). A task taken by
        # another process meanwhile is caught by _apply, before its payload is read.
        batch = await self.queue.fetchall(
            f"SELECT seq, kind, documents, payload FROM tasks WHERE seq IN ({', '.join('?' for _ in chosen)})"
            " ORDER BY seq",
            chosen,
        )
        started = time.time()
        try:
            outcome = await self._apply(tenant, index, batch)
        except Exception:
            # One bad task must not sink the batch (nor block the queue): apply the head task alone,
            # and if it fails, record why and move on.
            log.warning("search: a batch of %s/%s failed; retrying its first task alone", tenant, index)
            batch = batch[:1]
            outcome = await self._apply(tenant, index, batch, guarded=True)
        if outcome is _TAKEN:
            return 0
        seqs = [r["seq"] for r in batch]
        marks = ", ".join("?" for _ in seqs)
        await self.queue.execute(
            f"UPDATE tasks SET status = ?, error = ?, payload = NULL, started_at = ?, finished_at = ?"
            f" WHERE seq IN ({marks}) AND status = 'enqueued'",
            ("failed" if outcome else "succeeded", outcome, started, time.time(), *seqs),
        )
        await self._notify()
        return len(seqs)

    async def _apply(self, tenant: str, index: str, batch: list[Row], guarded: bool = False) -> str | None:
        """Apply the batch in one index transaction; the error (with ``guarded``), or ``_TAKEN`` when
        another process applied it meanwhile (its tasks are no longer queued)."""
        seqs = [r["seq"] for r in batch]
        marks = ", ".join("?" for _ in seqs)
        async with self.db.transaction() as tx:
            # Checked under the index write lock: another worker marks a batch done only after its
            # index commit, so a batch still queued here was not applied, or was applied unchanged.
            queued = await self.queue.fetchone(
                f"SELECT count(*) AS n FROM tasks WHERE seq IN ({marks}) AND status = 'enqueued'", seqs
            )
            if queued is None or queued["n"] < len(seqs):
                return _TAKEN
            generation = await _current_generation(tx, tenant, index)
            if generation is None:
                return "the index was deleted"
            if guarded:
                return await self._apply_guarded(tx, generation, batch)
            await _apply_tasks(tx, generation, batch)
            return None

    async def _move_old_queue(self) -> None:
        """Version 1 kept the tasks in search.db: move them to the queue file, then drop the table."""
        old = await self.db.fetchone(
            "SELECT 1 AS x FROM sqlite_master WHERE type = 'table' AND name = 'tasks'"
        )
        if old is None:
            return
        rows = await self.db.fetchall(f"SELECT {_TASK_COLUMNS} FROM tasks ORDER BY seq")
        if rows:
            marks = ", ".join("?" for _ in _TASK_COLUMNS.split(","))
            async with self.queue.transaction() as tx:
                await tx.executemany(
                    f"INSERT OR IGNORE INTO tasks ({_TASK_COLUMNS}) VALUES ({marks})",
                    [tuple(r) for r in rows],
                )
        async with self.db.transaction() as tx:
            await tx.execute("DROP TABLE tasks")

    async def _apply_guarded(self, tx: Tx, generation: _Generation, batch: list[Row]) -> str | None:
        """Apply inside a savepoint: on failure undo the partial writes and return the reason."""
        await tx.execute("SAVEPOINT apply_task")
        try:
            await _apply_tasks(tx, generation, batch)
        except Exception as exc:
            await tx.execute("ROLLBACK TO apply_task")
            await tx.execute("RELEASE apply_task")
            return f"indexing failed: {type(exc).__name__}: {exc}"
        await tx.execute("RELEASE apply_task")
        return None

    # --- search ---------------------------------------------------------------------------------

    async def search(self, tenant: str, index: IndexInfo, query: SearchQuery) -> SearchResult:
        started = time.perf_counter()
        try:
            plan, (hits, total, facet_rows) = await self._run(tenant, index.name, query)
        except _Reindexed:
            # The settings changed (a new generation) since the cached lookup: look again, once.
            self._forget(tenant, index.name)
            try:
                plan, (hits, total, facet_rows) = await self._run(tenant, index.name, query)
            except _Reindexed:
                raise ServiceUnavailable("the index was re-indexed during the search: retry") from None
        facets: dict[str, dict[str, int]] = {f: {} for f in query.facets}
        names = plan.g.definition.filterable
        for number, value, n in facet_rows:
            counts = facets[names[number]]
            key = _facet_key(value)
            counts[key] = counts.get(key, 0) + n
        return SearchResult(
            hits=plan.documents(hits, self._marker),
            total=int(total[0]["n"]),
            facets={f: _top(v) for f, v in facets.items()},
            took_ms=round((time.perf_counter() - started) * 1000, 3),
        )

    async def _run(self, tenant: str, name: str, query: SearchQuery) -> tuple[_Plan, tuple[list[Row], ...]]:
        found = await self._lookup(tenant, name)
        if found is None:
            raise NotFound(f"index {name!r} does not exist")
        generation = found[0]
        if not _covers(generation, query):
            raise _Reindexed
        plan = _Plan(generation, query)
        results = self._read_inline(plan)
        if results is None:
            # Hits, exact count and facets are independent reads: run them side by side on the readers.
            kinds = await self._read(*plan.kinds()) if query.facets else []
            statements = plan.statements(kinds)
            results = list(await asyncio.gather(*(self._read(*s) for s in statements)))
        return plan, (results[0], results[1], results[2] if len(results) > 2 else [])

    async def _lookup(self, tenant: str, name: str) -> tuple[_Generation, IndexInfo] | None:
        """(generation, index) from a cache that lives a couple of seconds, else the registry."""
        cached = self._registry.get((tenant, name))
        if cached is not None and cached[0] > time.monotonic():
            return cached[1], cached[2]
        row = await self.db.fetchone("SELECT * FROM indexes WHERE tenant_id = ? AND name = ?", (tenant, name))
        if row is None:
            self._forget(tenant, name)
            return None
        info = _row_info(row)
        generation = _Generation(int(row["generation"]), info.definition)
        self._registry[(tenant, name)] = (time.monotonic() + _REGISTRY_TTL_S, generation, info)
        return generation, info

    def _forget(self, tenant: str, name: str) -> None:
        self._registry.pop((tenant, name), None)

    def _read_inline(self, plan: _Plan) -> list[list[Row]] | None:
        """Run a search's statements on the event-loop thread, in one read transaction, if they finish
        within ``inline_budget`` seconds; ``None`` when they do not (the caller then uses the reader threads).

        Most searches take well under a millisecond, less than handing three statements to reader
        threads and back; a search over many matches is interrupted early, so it never stalls the loop.
        """
        conn = self._inline
        if conn is None:
            raise RuntimeError("the search engine is not started")
        self._inline_deadline = time.perf_counter() + self.inline_budget
        try:
            conn.execute("BEGIN")
            kinds = conn.execute(*plan.kinds()).fetchall() if plan.query.facets else []
            results = [conn.execute(sql, params).fetchall() for sql, params in plan.statements(kinds)]
            conn.execute("COMMIT")
            return results
        except sqlite3.Error as exc:
            self._inline_deadline = math.inf  # the ROLLBACK must not be interrupted in turn
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if "interrupted" in str(exc):
                self.moved_to_readers += 1
                return None
            if "no such table" in str(exc):
                raise _Reindexed from None
            raise

    def _out_of_time(self) -> int:
        """SQLite's progress handler on the inline connection: non-zero interrupts the statement."""
        return 1 if time.perf_counter() > self._inline_deadline else 0

    async def _read(self, sql: str, params: Sequence[Any]) -> list[Row]:
        try:
            return await self.db.fetchall(sql, params)
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                raise _Reindexed from None
            raise


def _covers(generation: _Generation, query: SearchQuery) -> bool:
    """Whether the generation declares every field the (validated, maybe against newer settings) query uses."""
    filtered = fields_of(query.filter) if query.filter is not None else ()
    return all(f in generation.fields for f in (*query.facets, *filtered)) and all(
        key.field in generation.sort_column for key in query.sort
    )


_TAKEN = "(applied by another process)"  # a sentinel, compared by identity


class _Reindexed(Exception):
    """The generation a search planned against was replaced by a settings change."""


def _top(counts: dict[str, int]) -> dict[str, int]:
    ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:MAX_FACET_VALUES]
    return dict(ordered)


class _Plan:
    """The SQL of one search: hits, exact count and facet counts share one WHERE clause."""

    def __init__(self, generation: _Generation, query: SearchQuery) -> None:
        self.g = generation
        self.query = query
        self.match = match_expression(query.q)
        params: list[Any] = []
        filter_sql = ""
        if query.filter:
            filter_sql = to_sql(
                query.filter, "d", generation.fields, generation.attrs, params, correlated=bool(self.match)
            )
        self.filter_sql, self.filter_params = filter_sql, params

    def _from(self) -> tuple[str, list[Any]]:
        g = self.g
        params: list[Any] = []
        conditions = []
        if self.match:
            source = f"{g.fts} JOIN {g.docs} d ON d.rowid = {g.fts}.rowid"
            conditions.append(f"{g.fts} MATCH ?")
            params.append(self.match)
        else:
            source = f"{g.docs} d"
        if self.filter_sql:
            conditions.append(self.filter_sql)
            params.extend(self.filter_params)
        where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
        return f"FROM {source}{where}", params

    def hits(self) -> tuple[str, list[Any]]:
        g = self.g
        source, params = self._from()
        columns = ["d.body AS body"]
        select_params: list[Any] = []
        if self.match:
            # BM25 (FTS5 normalises by the whole row's length), then a bonus per searchable field the
            # query equals exactly, weighted like the field: "Dune" ranks before "Dune: Part Two".
            folded = exact_key(self.query.q)
            exact = " + ".join(
                f"(d.{column} IS ?) * {weight!r}"
                for column, weight in zip(g.exact_columns, _weights(len(g.exact_columns)), strict=True)
            )
            columns.append(f"-{g.bm25} + {EXACT_BONUS!r} * ({exact}) AS score")
            select_params = [folded] * len(g.exact_columns)
        else:
            columns.append("0.0 AS score")
        order = []
        for key in self.query.sort:
            column = f"d.{g.sort_column[key.field]}"
            order += [f"{column} IS NULL", f"{column} {'DESC' if key.descending else 'ASC'}"]
        if self.match:
            order.append("score DESC")
        order.append("d.rowid")
        sql = f"SELECT {', '.join(columns)} {source} ORDER BY {', '.join(order)} LIMIT ? OFFSET ?"
        return sql, [*select_params, *params, self.query.limit, self.query.offset]

    def count(self) -> tuple[str, list[Any]]:
        if self.match and not self.filter_sql:
            return f"SELECT count(*) AS n FROM {self.g.fts} WHERE {self.g.fts} MATCH ?", [self.match]
        source, params = self._from()
        return f"SELECT count(*) AS n {source}", params

    def statements(self, kinds: Sequence[Row]) -> list[tuple[str, list[Any]]]:
        """Hits, exact count, and the facet counts when asked for and there are any."""
        facets = self.facets(kinds) if self.query.facets else None
        return [self.hits(), self.count(), *([facets] if facets else [])]

    def kinds(self) -> tuple[str, list[Any]]:
        """Which of the facet fields hold scalars, lists or both (read before :meth:`facets`)."""
        numbers = [self.g.fields[f].number for f in self.query.facets]
        marks = ", ".join("?" for _ in numbers)
        return f"SELECT field, scalars, lists FROM {self.g.kinds} WHERE field IN ({marks})", numbers

    def facets(self, kinds: Sequence[Row]) -> tuple[str, list[Any]] | None:
        """Value counts per facet field: its typed column where it holds a scalar, plus the
        attribute rows of the documents where it holds a list (the column is NULL there).
        ``kinds`` (from :meth:`kinds`) says which of the two each field needs; ``None``: no values."""
        g = self.g
        has = {row[0]: (row[1], row[2]) for row in kinds}
        wanted = [(g.fields[f], i, *has[g.fields[f].number]) for i, f in enumerate(self.query.facets)
                  if g.fields[f].number in has]  # fmt: skip
        if not wanted:
            return None
        parts: list[str] = []
        if not (self.match or self.filter_sql):
            for field, _, scalars, lists in wanted:
                if scalars:
                    parts.append(
                        f"SELECT {field.number:d} AS field, {field.column} AS value, count(*) AS n FROM {g.docs}"
                        f" WHERE {field.column} IS NOT NULL GROUP BY {field.column}"
                    )
                if lists:
                    parts.append(
                        f"SELECT {field.number:d}, value, count(*) FROM {g.attrs} WHERE field = {field.number:d}"
                        " GROUP BY value"
                    )
            return " UNION ALL ".join(parts), []
        source, params = self._from()
        if len(wanted) == 1 and not (wanted[0][2] and wanted[0][3]):
            # One pass over the matching documents: the usual case (one facet, of one kind).
            field, _, scalars, _ = wanted[0]
            if scalars:
                sql = (
                    f"SELECT {field.number:d} AS field, v AS value, count(*) AS n FROM"
                    f" (SELECT d.{field.column} AS v {source}) WHERE v IS NOT NULL GROUP BY v"
                )
            else:  # CROSS JOIN fixes the order: probe each matching document's values
                sql = (
                    f"SELECT {field.number:d} AS field, a.value AS value, count(*) AS n FROM"
                    f" (SELECT d.rowid AS doc {source}) m CROSS JOIN {g.attrs} a"
                    f" ON a.doc = m.doc AND a.field = {field.number:d} GROUP BY a.value"
                )
            return sql, params
        # Several facets (or one of both kinds): find the matching documents once, then count.
        picked = "".join(f", d.{field.column} AS v{i}" for field, i, _, _ in wanted)
        for field, i, scalars, lists in wanted:
            if scalars:
                parts.append(
                    f"SELECT {field.number:d} AS field, v{i} AS value, count(*) AS n FROM m"
                    f" WHERE v{i} IS NOT NULL GROUP BY v{i}"
                )
            if lists:
                parts.append(
                    f"SELECT {field.number:d}, a.value, count(*) FROM m CROSS JOIN {g.attrs} a"
                    f" ON a.doc = m.doc AND a.field = {field.number:d} WHERE m.v{i} IS NULL GROUP BY a.value"
                )
        sql = f"WITH m AS MATERIALIZED (SELECT d.rowid AS doc{picked} {source}) {' UNION ALL '.join(parts)}"
        return sql, params

    def documents(self, rows: Sequence[Row], marker: _Marker) -> list[dict[str, Any]]:
        """The documents of the hit rows, with ``_score`` and, when asked for, ``_highlight``."""
        docs: list[dict[str, Any]] = [msgspec.json.decode(row["body"]) for row in rows]
        marked = self._highlights(docs, marker) if self.query.highlight else None
        for i, (doc, row) in enumerate(zip(docs, rows, strict=True)):
            doc["_score"] = float(row["score"])
            if marked is not None:
                doc["_highlight"] = marked[i]
        return docs

    def _highlights(self, docs: list[dict[str, Any]], marker: _Marker) -> list[dict[str, str]]:
        fields = self.g.definition.searchable
        texts = [[_text(doc.get(f)) for f in fields] for doc in docs]  # as indexed (None: "")
        if self.match:
            texts = marker.mark(self.match, texts)
        return [
            {f: text[i] for i, f in enumerate(fields) if doc.get(f) is not None}
            for doc, text in zip(docs, texts, strict=True)
        ]


class _Marker:
    """FTS5's ``highlight()`` for a page of hits.

    An index's FTS5 table is contentless, and FTS5 highlights only the text it stores; so the hits'
    texts go into a private in-memory FTS5 table (same tokenizer), the query's MATCH runs there, and
    the transaction is rolled back. The marks are exactly those FTS5 would put in the index's rows.
    Used on the event-loop thread only, one call at a time.
    """

    def __init__(self) -> None:
        self._conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        self._tables: set[int] = set()

    def mark(self, match: str, texts: list[list[str]]) -> list[list[str]]:
        """``texts`` (per hit, per searchable field) with the matches of ``match`` in ``<mark>``."""
        if not texts:
            return texts
        width = len(texts[0])
        table, columns = f"m{width}", ", ".join(f"c{i}" for i in range(width))
        if width not in self._tables:
            self._conn.execute(f"CREATE VIRTUAL TABLE {table} USING fts5({columns}, {_TOKENIZE})")
            self._tables.add(width)
        marks = ", ".join(f"highlight({table}, {i}, '<mark>', '</mark>')" for i in range(width))
        self._conn.execute("BEGIN")
        try:
            self._conn.executemany(
                f"INSERT INTO {table} (rowid, {columns}) VALUES (?{', ?' * width})",
                [(i, *row) for i, row in enumerate(texts)],
            )
            query = f"SELECT rowid, {marks} FROM {table} WHERE {table} MATCH ?"
            found = {row[0]: list(row[1:]) for row in self._conn.execute(query, (match,))}
        finally:
            self._conn.execute("ROLLBACK")
        return [found.get(i, row) for i, row in enumerate(texts)]

    def close(self) -> None:
        self._conn.close()


async def _current_generation(tx: Tx, tenant: str, index: str) -> _Generation | None:
    row = await tx.fetchone(
        "SELECT generation, definition FROM indexes WHERE tenant_id = ? AND name = ?", (tenant, index)
    )
    return _Generation(row["generation"], _DEF_DECODER.decode(row["definition"])) if row else None


async def _apply_tasks(tx: Tx, generation: _Generation, tasks: Sequence[Row]) -> None:
    """Apply upserts and deletes in queue order; within the batch the last write of an id wins.

    A queued payload is the JSON array as received: each document is stored as its own bytes (no
    re-encoding) and decoded only into the fields the index reads.
    """
    latest: dict[str, msgspec.Raw | None] = {}
    for task in tasks:
        if task["kind"] == "documents.delete":
            for doc_id in _IDS_DECODER.decode(task["payload"]):
                latest.pop(doc_id, None)
                latest[doc_id] = None
        else:
            for raw in _RAW_DOCS_DECODER.decode(task["payload"]):
                doc_id = generation.doc_id(raw)
                latest.pop(doc_id, None)  # re-inserting keeps the dict in last-write order
                latest[doc_id] = raw
    ids = list(latest)
    existing: dict[str, int] = {}
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        marks = ", ".join("?" for _ in chunk)
        for row in await tx.fetchall(
            f"SELECT rowid, doc_id FROM {generation.docs} WHERE doc_id IN ({marks})", chunk
        ):
            existing[row["doc_id"]] = row["rowid"]
    if existing:
        await generation.remove(tx, list(existing.values()))
    next_row = await tx.fetchone(f"SELECT coalesce(max(rowid), 0) AS n FROM {generation.docs}")
    assert next_row is not None
    fresh = int(next_row["n"])
    rows = []
    for doc_id, body in latest.items():
        if body is None:
            continue
        rowid = existing.get(doc_id)
        if rowid is None:
            fresh += 1
            rowid = fresh
        rows.append((rowid, doc_id, body))  # sqlite3 binds a Raw as a BLOB, uncopied
    await generation.write(tx, rows)


async def _copy(tx: Tx, old: _Generation, new: _Generation) -> None:
    """Fill a new generation from the old one's stored bodies, keeping rowids."""
    last = 0
    while True:
        rows = await tx.fetchall(
            f"SELECT rowid, doc_id, body FROM {old.docs} WHERE rowid > ? ORDER BY rowid LIMIT 2000", (last,)
        )
        if not rows:
            return
        await new.write(tx, [(r["rowid"], r["doc_id"], r["body"]) for r in rows])
        last = rows[-1]["rowid"]


def _info(name: str, definition: IndexDefinition, created: float, updated: float) -> IndexInfo:
    return IndexInfo(
        name=name,
        primary_key=definition.primary_key,
        searchable=definition.searchable,
        filterable=definition.filterable,
        sortable=definition.sortable,
        created_at=created,
        updated_at=updated,
    )


def _row_info(row: Row) -> IndexInfo:
    return _info(row["name"], _DEF_DECODER.decode(row["definition"]), row["created_at"], row["updated_at"])


def _task(row: Row) -> Task:
    return Task(
        task_id=row["id"],
        index=row["index_name"],
        kind=row["kind"],
        status=row["status"],
        documents=row["documents"],
        error=row["error"],
        enqueued_at=row["enqueued_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
    )
