"""Search benchmark: the appliance's FTS5 adapter over HTTP next to raw SQLite FTS5, same corpus, same run.

Generates N documents whose words follow a Zipf distribution over a vocabulary of V made-up words (as
real text does), then:

1. indexes them through ``appliance run`` (a real process, loopback HTTP, batches of 1,000 with the
   last one waited for; each request body is JSON-encoded before the clock starts, as the raw side
   gets its rows ready-made), and with raw ``sqlite3``:

   * bare FTS5, the floor issue 6 names: the same two text fields into one FTS5 table (same
     tokenizer, WAL, synchronous=NORMAL as search.db), one transaction per 1,000 documents (the HTTP
     batch), and for reference the same with 20,000 per transaction (the worker merges queued
     batches of an index into transactions of up to 20,000 documents);
   * the adapter's layout written by hand: stored JSON body, typed columns for the scalar filterable
     and sortable fields, exact-match keys, the row of a contentless FTS5 table, attribute rows for
     list values (tags);
2. runs M mixed queries (1-2 words, last one a prefix, plus a filter and a facet) through
   ``POST /v1/indexes/{index}/search`` and as the adapter's SQL, hand-written, on the raw database
   (the same three statements: hits, exact count, facet counts). The HTTP side is timed with a lean
   keep-alive client (``http.client``, the request body encoded before the clock starts: the raw side
   gets its parameters ready-made too), and for reference with httpx, whose own cost per request
   (about half a millisecond here) is the client library's, not the appliance's;
3. runs the worst case: two very common words, with a facet.

Prints docs/s, query p50/p99 and the ratios. Run: ``.venv/bin/python benchmarks/bench_search.py``
(40,000 documents and 300 queries, well under a minute) or with ``--full`` (100,000 and 1,000).
"""

from __future__ import annotations

import argparse
import bisect
import http.client
import os
import random
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import msgspec

from appliance.search.sqlite_fts import MAX_EXACT_CHARS, exact_key, match_expression

ROOT_KEY = "bench-root-key-0123456789abcdef"
HEADERS = {"Authorization": f"Bearer {ROOT_KEY}"}
CATEGORIES = [f"cat{i}" for i in range(20)]
TAGS = [f"tag{i}" for i in range(50)]
BATCH = 1000
DEFINITION = {
    "searchable": ["title", "body"],
    "filterable": ["category", "year", "tags"],
    "sortable": ["year"],
}


def vocabulary(size: int, rng: random.Random) -> list[str]:
    letters = "abcdefghijklmnopqrstuvwxyz"
    words: set[str] = set()
    while len(words) < size:
        words.add("".join(rng.choice(letters) for _ in range(rng.randint(3, 9))))
    return sorted(words, key=lambda w: rng.random())


def zipf_sampler(words: list[str], rng: random.Random) -> Callable[[int], list[str]]:
    cumulative, total = [], 0.0
    for rank in range(1, len(words) + 1):
        total += 1.0 / rank
        cumulative.append(total)

    def sample(k: int) -> list[str]:
        return [words[min(bisect.bisect(cumulative, rng.random() * total), len(words) - 1)] for _ in range(k)]

    return sample


def corpus(count: int, vocab_size: int, seed: int = 7) -> tuple[list[dict[str, Any]], list[str]]:
    rng = random.Random(seed)
    words = vocabulary(vocab_size, rng)
    sample = zipf_sampler(words, rng)
    docs = [
        {
            "id": i,
            "title": " ".join(sample(rng.randint(3, 7))),
            "body": " ".join(sample(rng.randint(15, 45))),
            "category": rng.choice(CATEGORIES),
            "year": rng.randint(1950, 2025),
            "tags": rng.sample(TAGS, rng.randint(1, 3)),
        }
        for i in range(count)
    ]
    return docs, words


def queries(count: int, words: list[str], seed: int = 11) -> list[dict[str, Any]]:
    """Mixed queries: mid-frequency words (ranks 50-5000), a filter, a facet; the last word a prefix."""
    rng = random.Random(seed)
    built = []
    for i in range(count):
        terms = rng.sample(words[50:5000], rng.randint(1, 2))
        terms[-1] = terms[-1][: max(3, len(terms[-1]) - 1)]
        if i % 2:
            filter_: dict[str, Any] = {"term": {"category": rng.choice(CATEGORIES)}}
        else:
            filter_ = {"range": {"year": {"gte": rng.randint(1950, 2000)}}}
        built.append({"q": " ".join(terms), "filter": filter_, "facets": ["tags"], "limit": 20})
    return built


# --- the appliance, as a process ------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system, all threads) a process has used so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def appliance(data_dir: Path) -> Iterator[tuple[str, int]]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")}
    env.update(
        APPLIANCE_DATA_DIR=str(data_dir), APPLIANCE_PORT=str(port), APPLIANCE_ROOT_KEY=ROOT_KEY,
        APPLIANCE_RATE_LIMIT_PER_KEY="", APPLIANCE_RATE_LIMIT_PER_IP="", APPLIANCE_LOG_LEVEL="WARNING",
        APPLIANCE_MAX_REQUEST_BODY_BYTES=str(64 * 1024**2), APPLIANCE_PLUGINS="none",
    )  # fmt: skip
    log = (data_dir.parent / "appliance.log").open("wb")
    process = subprocess.Popen([sys.executable, "-m", "appliance", "run"], env=env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60  # a busy machine starts it slowly
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)
        else:
            raise RuntimeError("the appliance did not start; see appliance.log")
        yield url, process.pid
    finally:
        process.terminate()
        process.wait(timeout=15)
        log.close()


def index_over_http(client: httpx.Client, docs: list[dict[str, Any]], pid: int) -> tuple[float, float]:
    """(wall seconds, the appliance process's CPU seconds) to index ``docs``."""
    assert client.put("/v1/indexes/bench", json=DEFINITION).status_code == 201
    bodies = [msgspec.json.encode(docs[start : start + BATCH]) for start in range(0, len(docs), BATCH)]
    headers = {"Content-Type": "application/json"}
    cpu = cpu_seconds(pid)
    started = time.perf_counter()
    for i, body in enumerate(bodies):
        last = i == len(bodies) - 1
        response = client.post(
            "/v1/indexes/bench/documents",
            params={"wait": "true"} if last else {},
            content=body,
            headers=headers,
        )
        assert response.status_code == (200 if last else 202), response.text
    assert response.json()["status"] == "succeeded", response.text
    return time.perf_counter() - started, cpu_seconds(pid) - cpu


def search_over_http(client: httpx.Client, body: dict[str, Any]) -> tuple[float, int]:
    raw = msgspec.json.encode(body)
    headers = {"Content-Type": "application/json"}
    started = time.perf_counter()
    response = client.post("/v1/indexes/bench/search", content=raw, headers=headers)
    elapsed = time.perf_counter() - started
    assert response.status_code == 200, response.text
    return elapsed, int(response.json()["total"])


def search_lean(conn: http.client.HTTPConnection, body: dict[str, Any]) -> tuple[float, int]:
    """One search over a kept-alive ``http.client`` connection: little client-side cost to measure."""
    raw = msgspec.json.encode(body)
    headers = {**HEADERS, "Content-Type": "application/json"}
    started = time.perf_counter()
    conn.request("POST", "/v1/indexes/bench/search", raw, headers)
    response = conn.getresponse()
    payload = response.read()
    elapsed = time.perf_counter() - started
    assert response.status == 200, payload[:500]
    return elapsed, int(msgspec.json.decode(payload)["total"])


# --- raw SQLite, the same layout ------------------------------------------------------------------

RAW_SCHEMA = """
CREATE TABLE docs (rowid INTEGER PRIMARY KEY, doc_id TEXT NOT NULL UNIQUE, f0, f1, f2, s0, x0, x1, body BLOB NOT NULL);
CREATE INDEX docs_s0 ON docs (s0);
CREATE VIRTUAL TABLE fts USING fts5(c0, c1, content = '', tokenize = 'unicode61 remove_diacritics 2');
CREATE TABLE attrs (field INTEGER NOT NULL, value, doc INTEGER NOT NULL, PRIMARY KEY (field, value, doc)) WITHOUT ROWID;
CREATE INDEX attrs_doc ON attrs (doc, field, value);
"""
TAGS_FIELD = 2  # the attribute table's number for "tags", the third filterable field


def raw_connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


def index_raw(path: Path, docs: list[dict[str, Any]]) -> tuple[float, float]:
    conn = raw_connect(path)
    conn.executescript(RAW_SCHEMA)
    cpu = time.process_time()
    started = time.perf_counter()
    for start in range(0, len(docs), BATCH):
        batch = docs[start : start + BATCH]
        conn.execute("BEGIN IMMEDIATE")
        rowids = [d["id"] + 1 for d in batch]
        conn.executemany(
            "INSERT INTO docs (rowid, doc_id, f0, f1, f2, s0, x0, x1, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(r, str(d["id"]), d["category"], d["year"], None, d["year"], _exact(d["title"]), _exact(d["body"]),
              msgspec.json.encode(d)) for r, d in zip(rowids, batch, strict=True)],
        )  # fmt: skip
        conn.executemany(
            "INSERT INTO fts (rowid, c0, c1) VALUES (?, ?, ?)",
            [(r, d["title"], d["body"]) for r, d in zip(rowids, batch, strict=True)],
        )
        conn.executemany(
            "INSERT OR IGNORE INTO attrs (field, value, doc) VALUES (?, ?, ?)",
            [(TAGS_FIELD, t, r) for r, d in zip(rowids, batch, strict=True) for t in d["tags"]],
        )
        conn.execute("COMMIT")
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    conn.close()
    return elapsed, cpu


def _exact(text: str) -> str | None:
    return exact_key(text) if len(text) <= MAX_EXACT_CHARS else None


def index_bare_fts(path: Path, docs: list[dict[str, Any]], batch: int = BATCH) -> tuple[float, float]:
    conn = raw_connect(path)
    conn.execute("CREATE VIRTUAL TABLE fts USING fts5(c0, c1, tokenize = 'unicode61 remove_diacritics 2')")
    cpu = time.process_time()
    started = time.perf_counter()
    for start in range(0, len(docs), batch):
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO fts (rowid, c0, c1) VALUES (?, ?, ?)",
            [(d["id"] + 1, d["title"], d["body"]) for d in docs[start : start + batch]],
        )
        conn.execute("COMMIT")
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    conn.close()
    return elapsed, cpu


def _raw_filter(filter_: dict[str, Any]) -> tuple[str, list[Any]]:
    if "term" in filter_:
        return "d.f0 = ?", [filter_["term"]["category"]]
    return "typeof(d.f1) IN ('integer', 'real') AND d.f1 >= ?", [filter_["range"]["year"]["gte"]]


def search_raw(conn: sqlite3.Connection, body: dict[str, Any]) -> tuple[float, int]:
    """The adapter's three statements (hits, exact count, facet counts), written by hand."""
    started = time.perf_counter()
    match = match_expression(body["q"])
    where, params = ["fts MATCH ?"], [match]
    if body.get("filter"):
        clause, values = _raw_filter(body["filter"])
        where.append(clause)
        params += values
    source = f"FROM fts JOIN docs d ON d.rowid = fts.rowid WHERE {' AND '.join(where)}"
    key = exact_key(body["q"])
    rows = conn.execute(
        f"SELECT d.body, -bm25(fts, 2.0, 1.0) + 1000.0 * ((d.x0 IS ?) * 2.0 + (d.x1 IS ?) * 1.0) AS score {source}"
        " ORDER BY score DESC, d.rowid LIMIT ? OFFSET 0",
        [key, key, *params, body["limit"]],
    ).fetchall()
    [msgspec.json.decode(r[0]) for r in rows]
    total = conn.execute(f"SELECT count(*) {source}", params).fetchone()[0]
    conn.execute(
        f"SELECT a.value, count(*) FROM (SELECT d.rowid AS doc {source}) m"
        f" CROSS JOIN attrs a ON a.doc = m.doc AND a.field = {TAGS_FIELD} GROUP BY a.value",
        params,
    ).fetchall()
    return time.perf_counter() - started, int(total)


# --- report ---------------------------------------------------------------------------------------


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=40_000)
    parser.add_argument("--vocabulary", type=int, default=50_000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument(
        "--full", action="store_true", help="issue 6's sizes: 100,000 docs, 1,000 queries (minutes)"
    )
    args = parser.parse_args()
    if args.full:
        args.docs, args.queries = 100_000, 1_000

    t0 = time.perf_counter()
    docs, words = corpus(args.docs, args.vocabulary)
    mixed = queries(args.queries, words)
    print(
        f"corpus: {len(docs):,} docs, {args.vocabulary:,}-word Zipf vocabulary ({time.perf_counter() - t0:.1f}s to generate)"
    )

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        load = [os.getloadavg()[0]]  # a shared machine: the ratios are worth as much as the quiet
        raw_s, raw_cpu = index_raw(root / "raw.db", docs)
        bare_s, bare_cpu = index_bare_fts(root / "bare.db", docs)
        bare20k_s, bare20k_cpu = index_bare_fts(root / "bare20k.db", docs, batch=20_000)
        (root / "data").mkdir()
        with (
            appliance(root / "data") as (url, pid),
            httpx.Client(base_url=url, headers=HEADERS, timeout=120) as client,
        ):
            http_s, http_cpu = index_over_http(client, docs, pid)
            load.append(os.getloadavg()[0])
            raw_conn = raw_connect(root / "raw.db")
            lean = http.client.HTTPConnection(url.removeprefix("http://"), timeout=120)
            for body in mixed[:20]:  # warm both caches
                search_lean(lean, body)
                search_over_http(client, body)
                search_raw(raw_conn, body)
            app_times, httpx_times, raw_times = [], [], []
            for body in mixed:
                app_elapsed, app_total = search_lean(lean, body)
                httpx_times.append(search_over_http(client, body)[0])
                raw_elapsed, raw_total = search_raw(raw_conn, body)
                assert app_total == raw_total, (body, app_total, raw_total)
                app_times.append(app_elapsed)
                raw_times.append(raw_elapsed)
            lean.close()
            common = {"q": f"{words[0]} {words[1]}", "facets": ["tags"], "limit": 20}
            worst_app = [search_over_http(client, common) for _ in range(5)]
            worst_raw = [search_raw(raw_conn, {**common, "filter": None}) for _ in range(5)]
            assert {t for _, t in worst_app} == {t for _, t in worst_raw}, (worst_app, worst_raw)
            raw_conn.close()

    n = len(docs)
    print(
        f"\nload average (1 min) before indexing {load[0]:.2f}, after {load[1]:.2f} on {os.cpu_count()} cores"
    )
    print("indexing: docs per second of wall time (and per CPU second: steadier on a busy machine)")
    print(
        f"  raw sqlite3, bare FTS5, 1,000 docs a transaction : {n / bare_s:10,.0f}  ({n / bare_cpu:,.0f}/CPU s)  the floor"
    )
    print(
        f"  raw sqlite3, bare FTS5, 20,000 docs a transaction: {n / bare20k_s:10,.0f}  ({n / bare20k_cpu:,.0f}/CPU s)"
    )
    print(
        f"  raw sqlite3, the adapter's layout by hand        : {n / raw_s:10,.0f}  ({n / raw_cpu:,.0f}/CPU s)"
    )
    print(
        f"  appliance over HTTP (server process, all threads): {n / http_s:10,.0f}  ({n / http_cpu:,.0f}/CPU s)"
    )
    print(
        f"  ratio vs bare FTS5 {bare_s / http_s:.2f}x (target >= 0.5x; per CPU s {bare_cpu / http_cpu:.2f}x),"
        f" vs bare FTS5 at 20,000 {bare20k_s / http_s:.2f}x, vs the same layout {raw_s / http_s:.2f}x"
    )
    p50a, p99a = percentile(app_times, 50) * 1000, percentile(app_times, 99) * 1000
    p50r, p99r = percentile(raw_times, 50) * 1000, percentile(raw_times, 99) * 1000
    print(f"\n{len(mixed)} mixed queries (text + filter + facet), ms")
    print(f"  raw sqlite3              : p50 {p50r:7.2f}   p99 {p99r:7.2f}")
    p50x, p99x = percentile(httpx_times, 50) * 1000, percentile(httpx_times, 99) * 1000
    print(f"  appliance over HTTP      : p50 {p50a:7.2f}   p99 {p99a:7.2f}   (http.client, kept alive)")
    print(
        f"  the same through httpx   : p50 {p50x:7.2f}   p99 {p99x:7.2f}   (+{p50x - p50a:.2f} ms the client's own)"
    )
    print(f"  difference               : p50 {p50a - p50r:+7.2f}   p99 {p99a - p99r:+7.2f}   ratio p50 {p50a / p50r:.2f}x"
          "   (target: p50 within 2 ms)")  # fmt: skip
    wa = statistics.median(t for t, _ in worst_app) * 1000
    wr = statistics.median(t for t, _ in worst_raw) * 1000
    print(f"\nworst case: two most common words ({worst_app[0][1]:,} matches), median of 5, ms")
    print(f"  raw sqlite3 {wr:.1f}   appliance {wa:.1f}   ratio {wa / wr:.2f}x")
    print(f"\ntotal {time.perf_counter() - t0:.1f}s")


if __name__ == "__main__":
    main()
