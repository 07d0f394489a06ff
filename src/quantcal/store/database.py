"""One SQLite file per study: runs, items and per-choice scores, written in transactions as work completes.

Tables
- ``runs``: one row per (variant, task, configuration hash) with the configuration, package versions,
  status and accumulated scoring seconds.
- ``items``: per run, the items whose scores are stored (gold, all true answers, content hash, meta).
  An item row is written in the same transaction as its scores, so "has an item row" means "done".
- ``scores``: per run, item and choice: log-likelihood, token/char/byte counts, greedy flag.
- ``item_errors``: items whose scoring failed (e.g. a non-finite log-likelihood), with the message.
- ``claims``: items a process is scoring now (owner, lease expiry), so several processes share one job: each
  claims a slice of the pending items in a transaction, renews its lease as it stores batches, and takes over
  claims whose lease expired (a crashed worker's).

Re-running the same job resumes: finished items are skipped and nothing is written twice. A killed
process loses at most the batch in flight (WAL journal, one transaction per batch). Two processes writing the same
run never store an item twice (an item already stored by the other is left as it is).

Opening checks what is there: a file that is not SQLite, or an SQLite file without quantcal's tables and columns,
is refused in one line (nothing is created in it); reading commands open the store read-only, so a read-only
file or mount can still be read and no ``-wal``/``-shm`` files are left beside a file we may not write.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from quantcal.errors import QuantcalError
from quantcal.faults import describe, sqlite_cause
from quantcal.tasks.items import Item

SCHEMA_VERSION = 1
#: How far ahead of this host's clock another host's lease may reach (clock skew) before it is cut to our lease.
CLOCK_SKEW_S = 60.0
#: How long a writer waits for another process's write lock before giving up with a "locked" error.
LOCK_TIMEOUT_S = 30.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run_id INTEGER PRIMARY KEY,
    variant TEXT NOT NULL,
    task TEXT NOT NULL,
    config_hash TEXT NOT NULL,
    config TEXT NOT NULL,
    versions TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    seconds REAL NOT NULL DEFAULT 0,
    UNIQUE (variant, task, config_hash)
);
CREATE TABLE IF NOT EXISTS items (
    run_id INTEGER NOT NULL REFERENCES runs(run_id),
    item_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    gold INTEGER NOT NULL,
    golds TEXT NOT NULL,
    n_choices INTEGER NOT NULL,
    item_hash TEXT NOT NULL,
    meta TEXT NOT NULL,
    PRIMARY KEY (run_id, item_id)
);
CREATE TABLE IF NOT EXISTS scores (
    run_id INTEGER NOT NULL,
    item_id TEXT NOT NULL,
    choice INTEGER NOT NULL,
    loglik REAL NOT NULL,
    n_tokens INTEGER NOT NULL,
    n_chars INTEGER NOT NULL,
    n_bytes INTEGER NOT NULL,
    greedy INTEGER NOT NULL,
    PRIMARY KEY (run_id, item_id, choice)
);
CREATE TABLE IF NOT EXISTS texts (
    item_hash TEXT PRIMARY KEY,
    context TEXT NOT NULL,
    choices TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS item_errors (
    run_id INTEGER NOT NULL,
    item_id TEXT NOT NULL,
    message TEXT NOT NULL,
    PRIMARY KEY (run_id, item_id)
);
CREATE TABLE IF NOT EXISTS generations (
    run_id INTEGER NOT NULL REFERENCES runs(run_id),
    item_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    item_hash TEXT NOT NULL,
    prompt TEXT NOT NULL,
    targets TEXT NOT NULL,
    text TEXT NOT NULL,
    tokens TEXT NOT NULL,
    logprobs TEXT NOT NULL,
    offsets TEXT NOT NULL,
    stopped TEXT NOT NULL,
    PRIMARY KEY (run_id, item_id)
);
CREATE TABLE IF NOT EXISTS generation_extras (
    run_id INTEGER NOT NULL REFERENCES runs(run_id),
    item_id TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (run_id, item_id, key)
);
CREATE TABLE IF NOT EXISTS claims (
    run_id INTEGER NOT NULL,
    item_id TEXT NOT NULL,
    owner TEXT NOT NULL,
    expires REAL NOT NULL,
    PRIMARY KEY (run_id, item_id)
);
"""


@dataclass(frozen=True)
class RunInfo:
    run_id: int
    variant: str
    task: str
    config_hash: str
    config: dict[str, Any]
    status: str
    seconds: float
    n_items: int
    n_errors: int


@dataclass(frozen=True)
class ScoredItem:
    """What the store returns per item: everything predictions and metrics need."""

    item_id: str
    position: int
    gold: int
    golds: tuple[int, ...]
    item_hash: str
    logliks: tuple[float, ...]
    n_tokens: tuple[int, ...]
    n_chars: tuple[int, ...]
    n_bytes: tuple[int, ...]
    greedy: tuple[bool, ...]


def owner_alive(owner: str) -> bool:
    """Whether a claim's owner (``host:pid:token``) may still be working: a process on this host that no longer
    exists is not (its claims are taken over at once, not after the lease); one on another host is trusted until
    its lease expires."""
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


class Store:
    """A study's SQLite store. Open with :func:`open_store`; use as a context manager."""

    def __init__(self, path: Path, connection: sqlite3.Connection, readonly: bool = False,
                 holder: "StoreHolder | None" = None) -> None:
        self.path = path
        self.db = connection
        self.readonly = readonly
        self.holder = holder

    def close(self) -> None:
        self.db.close()
        if self.holder is not None:
            self.holder.release()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        """Close; when the block failed and this call created the store and nothing was scored into it, remove it
        (unless another process has it open): a failed run leaves no empty store behind."""
        empty = exc_type is not None and self.holder is not None and self.holder.created and not self._has_items()
        self.db.close()
        if self.holder is not None:
            self.holder.release(remove_if_alone=empty)

    def _has_items(self) -> bool:
        try:
            return any(self.db.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchone() is not None
                       for table in ("items", "generations") if table in _tables(self.db))
        except sqlite3.Error:
            return True  # unreadable now: keep it

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        if self.readonly:
            raise QuantcalError(f"{self.path} was opened read-only")
        with self.db:
            yield self.db

    # runs -----------------------------------------------------------------
    def get_or_create_run(self, variant: str, task: str, config_hash: str, config: dict[str, Any],
                          versions: dict[str, str]) -> int:
        """The run of (variant, task, configuration), created if new; safe when two processes start it at once."""
        now = time.time()
        with self._immediate() as db:
            db.execute(
                "INSERT OR IGNORE INTO runs (variant, task, config_hash, config, versions, status, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, 'running', ?, ?)",
                (variant, task, config_hash, json.dumps(config, sort_keys=True), json.dumps(versions, sort_keys=True), now, now),
            )
            row = db.execute("SELECT run_id FROM runs WHERE variant=? AND task=? AND config_hash=?",
                             (variant, task, config_hash)).fetchone()
        return int(row[0])

    def run_weights(self, run_id: int) -> str | None:
        """The digest of the weights a run's items were scored with (recorded when its model first loaded)."""
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (f"weights:{run_id}",)).fetchone()
        return None if row is None else str(row[0])

    def record_run_weights(self, run_id: int, digest: str) -> str:
        """Record ``digest`` as the run's weights unless one is recorded already; returns the recorded one."""
        with self._immediate() as db:
            db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", (f"weights:{run_id}", digest))
            return str(db.execute("SELECT value FROM meta WHERE key=?", (f"weights:{run_id}",)).fetchone()[0])

    def set_status(self, run_id: int, status: str, add_seconds: float = 0.0) -> None:
        with self.transaction() as db:
            db.execute("UPDATE runs SET status=?, updated_at=?, seconds=seconds+? WHERE run_id=?",
                       (status, time.time(), add_seconds, run_id))

    def runs(self) -> list[RunInfo]:
        rows = self.db.execute(
            "SELECT r.run_id, variant, task, config_hash, config, status, seconds,"
            " (SELECT COUNT(*) FROM items i WHERE i.run_id=r.run_id),"
            " (SELECT COUNT(*) FROM item_errors e WHERE e.run_id=r.run_id)"
            " FROM runs r ORDER BY r.run_id"
        ).fetchall()
        return [RunInfo(r[0], r[1], r[2], r[3], json.loads(r[4]), r[5], r[6], r[7], r[8]) for r in rows]

    def current_runs(self) -> list[RunInfo]:
        """The latest run of each variant on each task, in run order: what reports, metrics and exports read. An
        older run under the same names (the variant's recipe or settings changed since) stays in the store but is
        superseded (:meth:`find_run` looks among these)."""
        latest = {(r.variant, r.task): r for r in self.runs()}
        return sorted(latest.values(), key=lambda r: r.run_id)

    def find_run(self, variant: str, task: str) -> RunInfo:
        current = self.current_runs()
        for run in current:
            if run.variant == variant and run.task == task:
                return run
        known = sorted(f"{r.variant}/{r.task}" for r in current)
        raise QuantcalError(f"{self.path}: no run for variant {variant!r} on task {task!r}; runs: {', '.join(known) or 'none'}")

    # claims ---------------------------------------------------------------
    @contextmanager
    def _immediate(self) -> Iterator[sqlite3.Connection]:
        """A write transaction taken at its start, so a read-then-write by two processes cannot interleave."""
        if self.readonly:
            raise QuantcalError(f"{self.path} was opened read-only")
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.rollback()
            raise
        self.db.commit()

    def claim(self, run_id: int, wanted: Sequence[str], owner: str, n: int, lease_s: float,
              skip: set[str] = frozenset()) -> list[str]:  # type: ignore[assignment]
        """Claim up to ``n`` of ``wanted`` (in that order) that are neither stored, nor in ``skip``, nor claimed by
        another owner whose lease is still running; returns the claimed ids (empty: nothing left to take now).

        A lease reaching further ahead than ``lease_s`` plus :data:`CLOCK_SKEW_S` (a tampered store, or a host whose
        clock runs far ahead) is cut to ``lease_s`` from now: its owner keeps it by renewing, as any owner does, and
        a dead owner's items are taken over after at most ``lease_s``, never waited on forever."""
        now = time.time()
        with self._immediate() as db:
            db.execute("UPDATE claims SET expires=? WHERE run_id=? AND owner<>? AND NOT (expires <= ?)",
                       (now + lease_s, run_id, owner, now + lease_s + CLOCK_SKEW_S))
            done = {r[0] for r in db.execute("SELECT item_id FROM items WHERE run_id=?", (run_id,))}
            held = {item_id for item_id, other in db.execute(
                "SELECT item_id, owner FROM claims WHERE run_id=? AND owner<>? AND expires>?", (run_id, owner, now))
                if owner_alive(other)}
            take = [i for i in wanted if i not in done and i not in held and i not in skip][:n]
            db.executemany("INSERT OR REPLACE INTO claims (run_id, item_id, owner, expires) VALUES (?, ?, ?, ?)",
                           [(run_id, i, owner, now + lease_s) for i in take])
        return take

    def claim_holders(self, run_id: int, owner: str) -> list[tuple[str, int, float]]:
        """Who else holds live claims on the run's unstored items: ``(owner, items, latest expiry)`` each."""
        now = time.time()
        rows = self.db.execute(
            "SELECT c.owner, COUNT(*), MAX(c.expires) FROM claims c WHERE c.run_id=? AND c.owner<>? AND c.expires>? "
            "AND NOT EXISTS (SELECT 1 FROM items i WHERE i.run_id=c.run_id AND i.item_id=c.item_id) GROUP BY c.owner",
            (run_id, owner, now)).fetchall()
        return [(str(o), int(n), float(e)) for o, n, e in rows if owner_alive(str(o))]

    def renew_claims(self, run_id: int, owner: str, lease_s: float) -> None:
        with self.transaction() as db:
            db.execute("UPDATE claims SET expires=? WHERE run_id=? AND owner=?", (time.time() + lease_s, run_id, owner))

    def release_claims(self, run_id: int, owner: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM claims WHERE run_id=? AND owner=?", (run_id, owner))

    def unfinished(self, run_id: int, wanted: Sequence[str], skip: set[str] = frozenset()) -> int:  # type: ignore[assignment]
        """How many of ``wanted`` are not stored yet (``skip`` aside): scored by nobody, or claimed by another."""
        done = self.done_item_ids(run_id)
        return sum(1 for i in wanted if i not in done and i not in skip)

    # generated answers ------------------------------------------------------
    def write_generations(self, run_id: int, entries: Sequence[tuple[int, Any, Any]]) -> None:
        """Store finished generations ``(position, GenItem, Generation)`` in one transaction."""
        with self.transaction() as db:
            db.executemany(
                "INSERT OR IGNORE INTO generations (run_id, item_id, position, item_hash, prompt, targets, text, tokens,"
                " logprobs, offsets, stopped) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(run_id, item.id, position, item.hash, item.prompt, json.dumps(list(item.targets)), gen.text,
                  json.dumps(list(gen.tokens)), json.dumps(list(gen.logprobs)), json.dumps(list(gen.offsets)),
                  gen.stopped) for position, item, gen in entries])

    def write_generation_extras(self, run_id: int, key: str, values: dict[str, Any]) -> None:
        """Per item, a further measurement of its generation under ``key`` (P(True)'s log-likelihoods, sampled
        answers), JSON-encoded, in one transaction."""
        with self.transaction() as db:
            db.executemany("INSERT OR REPLACE INTO generation_extras (run_id, item_id, key, value) VALUES (?, ?, ?, ?)",
                           [(run_id, item_id, key, json.dumps(v)) for item_id, v in values.items()])

    def generation_extras(self, run_id: int, key: str) -> dict[str, Any]:
        if "generation_extras" not in _tables(self.db):
            return {}
        return {r[0]: json.loads(r[1]) for r in self.db.execute(
            "SELECT item_id, value FROM generation_extras WHERE run_id=? AND key=?", (run_id, key))}

    def generation_extra_keys(self, run_id: int) -> set[str]:
        """The further measurements a run's generations carry (``p_true``, ``samples:k=…``)."""
        if "generation_extras" not in _tables(self.db):
            return set()
        return {r[0] for r in self.db.execute("SELECT DISTINCT key FROM generation_extras WHERE run_id=?", (run_id,))}

    def done_generation_ids(self, run_id: int) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT item_id FROM generations WHERE run_id=?", (run_id,))}

    def generation_hashes(self, run_id: int) -> dict[str, str]:
        """Each stored generation's item id and the hash of the prompt and targets it answered."""
        return {r[0]: r[1] for r in self.db.execute("SELECT item_id, item_hash FROM generations WHERE run_id=?",
                                                    (run_id,))}

    def forget_generations(self, run_id: int, item_ids: Sequence[str]) -> None:
        """Drop the stored generations (and their further measurements) of ``item_ids``: their prompts changed."""
        with self.transaction() as db:
            for table in ("generations", "generation_extras"):
                db.executemany(f"DELETE FROM {table} WHERE run_id=? AND item_id=?", [(run_id, i) for i in item_ids])

    def generations(self, run_id: int) -> list[dict[str, Any]]:
        """A run's stored generations in dataset order, as plain records."""
        rows = self.db.execute(
            "SELECT item_id, position, item_hash, prompt, targets, text, tokens, logprobs, offsets, stopped "
            "FROM generations WHERE run_id=? ORDER BY position", (run_id,)).fetchall()
        return [{"item_id": r[0], "position": r[1], "item_hash": r[2], "prompt": r[3], "targets": json.loads(r[4]),
                 "text": r[5], "tokens": json.loads(r[6]), "logprobs": json.loads(r[7]), "offsets": json.loads(r[8]),
                 "stopped": r[9]} for r in rows]

    # items ----------------------------------------------------------------
    def done_item_ids(self, run_id: int) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT item_id FROM items WHERE run_id=?", (run_id,))}

    def write_scores(self, run_id: int, entries: Sequence[tuple[int, Item, Sequence[float], Sequence[int], Sequence[bool]]],
                     errors: Sequence[tuple[Item, str]] = ()) -> None:
        """Store finished items (position, item, logliks, token counts, greedy flags) in one transaction."""
        with self.transaction() as db:
            for position, item, logliks, n_tokens, greedy in entries:
                db.execute("DELETE FROM item_errors WHERE run_id=? AND item_id=?", (run_id, item.id))
                inserted = db.execute(
                    "INSERT OR IGNORE INTO items (run_id, item_id, position, gold, golds, n_choices, item_hash, meta)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (run_id, item.id, position, item.gold, json.dumps(list(item.golds)), len(item.choices),
                     item.content_hash, json.dumps(item.meta, sort_keys=True, default=str)),
                ).rowcount
                if not inserted:  # another process stored this item meanwhile: keep its scores, add none
                    continue
                db.execute("INSERT OR IGNORE INTO texts (item_hash, context, choices) VALUES (?, ?, ?)",
                           (item.content_hash, item.context, json.dumps(list(item.choices))))
                db.executemany(
                    "INSERT INTO scores (run_id, item_id, choice, loglik, n_tokens, n_chars, n_bytes, greedy)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [(run_id, item.id, j, float(ll), int(nt), len(c), len(c.encode("utf-8")), int(g))
                     for j, (ll, nt, c, g) in enumerate(zip(logliks, n_tokens, item.choices, greedy))],
                )
            for item, message in errors:
                db.execute("INSERT OR REPLACE INTO item_errors (run_id, item_id, message) VALUES (?, ?, ?)",
                           (run_id, item.id, message))
            db.executemany("DELETE FROM claims WHERE run_id=? AND item_id=?",
                           [(run_id, e[1].id) for e in entries] + [(run_id, item.id) for item, _ in errors])
            db.execute("UPDATE runs SET updated_at=? WHERE run_id=?", (time.time(), run_id))

    def item_texts(self, hashes: Sequence[str]) -> dict[str, tuple[str, list[str]]]:
        """Context and choices of scored items by content hash (shared by every run that scored them)."""
        out: dict[str, tuple[str, list[str]]] = {}
        if not _tables(self.db).get("texts"):  # a store written before texts were kept, opened read-only
            return out
        wanted = list(dict.fromkeys(hashes))
        for start in range(0, len(wanted), 500):
            chunk = wanted[start:start + 500]
            rows = self.db.execute(f"SELECT item_hash, context, choices FROM texts WHERE item_hash IN ({','.join('?' * len(chunk))})", chunk)
            out.update({h: (c, json.loads(ch)) for h, c, ch in rows})
        return out

    def errors(self, run_id: int) -> list[tuple[str, str]]:
        return list(self.db.execute("SELECT item_id, message FROM item_errors WHERE run_id=? ORDER BY item_id", (run_id,)))

    def scored_items(self, run_id: int) -> list[ScoredItem]:
        """All finished items of a run in dataset order, with their per-choice scores."""
        items = self.db.execute(
            "SELECT item_id, position, gold, golds, item_hash FROM items WHERE run_id=? ORDER BY position", (run_id,)
        ).fetchall()
        per_item: dict[str, list[tuple]] = {}
        for row in self.db.execute(
            "SELECT item_id, loglik, n_tokens, n_chars, n_bytes, greedy FROM scores WHERE run_id=? ORDER BY item_id, choice",
            (run_id,),
        ):
            per_item.setdefault(row[0], []).append(row[1:])
        out = []
        for item_id, position, gold, golds, item_hash in items:
            cols = list(zip(*per_item[item_id]))
            out.append(ScoredItem(item_id, position, gold, tuple(json.loads(golds)), item_hash, tuple(cols[0]),
                                  tuple(cols[1]), tuple(cols[2]), tuple(cols[3]), tuple(bool(g) for g in cols[4])))
        return out


#: Every table and its columns, as this quantcal writes them; ``texts`` and ``claims`` may be absent from stores
#: written before they existed (they are added when such a store is opened for writing).
TABLES: dict[str, set[str]] = {
    "meta": {"key", "value"},
    "runs": {"run_id", "variant", "task", "config_hash", "config", "versions", "status", "created_at", "updated_at", "seconds"},
    "items": {"run_id", "item_id", "position", "gold", "golds", "n_choices", "item_hash", "meta"},
    "generations": {"run_id", "item_id", "position", "item_hash", "prompt", "targets", "text", "tokens", "logprobs",
                    "offsets", "stopped"},
    "generation_extras": {"run_id", "item_id", "key", "value"},
    "scores": {"run_id", "item_id", "choice", "loglik", "n_tokens", "n_chars", "n_bytes", "greedy"},
    "texts": {"item_hash", "context", "choices"},
    "item_errors": {"run_id", "item_id", "message"},
    "claims": {"run_id", "item_id", "owner", "expires"},
}
OPTIONAL_TABLES = {"texts", "claims", "generations", "generation_extras"}


def _write_ahead(db: sqlite3.Connection) -> None:
    """``PRAGMA journal_mode=WAL``, retried while another process holds the lock: SQLite answers this pragma "locked"
    at once, without its busy handler, when a process creating the same store is mid-transaction."""
    deadline = time.monotonic() + LOCK_TIMEOUT_S
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _tables(db: sqlite3.Connection) -> dict[str, set[str]]:
    names = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
    return {n: {c[1] for c in db.execute(f"PRAGMA table_info('{n}')")} for n in names}


def _check_schema(db: sqlite3.Connection, path: Path) -> None:
    """Refuse a store whose tables, columns or schema version are not this quantcal's."""
    found = _tables(db)
    missing = [t for t in TABLES if t not in found and t not in OPTIONAL_TABLES]
    if missing:
        raise QuantcalError(f"{path}: not a quantcal store, or a damaged one (table {', '.join(missing)} missing)")
    for table, columns in TABLES.items():
        lacking = sorted(columns - found.get(table, columns))
        if lacking:
            raise QuantcalError(f"{path}: damaged quantcal store (table {table} lacks column {', '.join(lacking)})")
    row = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
    if row is None:
        raise QuantcalError(f"{path}: damaged quantcal store (no schema version in meta)")
    if str(row[0]) != str(SCHEMA_VERSION):
        raise QuantcalError(f"{path}: store schema version {row[0]}, this quantcal reads version {SCHEMA_VERSION}")


def _writable(path: Path) -> bool:
    """Whether this process may write the store file and create its ``-wal``/``-shm`` files beside it."""
    return os.access(path, os.W_OK) and os.access(path.parent, os.W_OK)


def _connect_readonly(path: Path) -> sqlite3.Connection:
    """A connection that only reads. A file we may write is opened as writers open it, with writes refused
    (``query_only``): the last connection to close then removes the ``-wal``/``-shm`` files a WAL store reads through,
    as a writer does (a ``mode=ro`` connection left them behind after every ``quantcal metrics``). A file we may not
    write is opened immutable (no ``-wal``/``-shm`` files are created)."""
    if _writable(path):
        db = sqlite3.connect(str(path), timeout=LOCK_TIMEOUT_S)
        db.execute("PRAGMA query_only=ON")
        return db
    return sqlite3.connect(f"file:{path.resolve()}?mode=ro&immutable=1", uri=True, timeout=LOCK_TIMEOUT_S)


class StoreHolder:
    """A shared ``flock`` on the store file for as long as a process has the store open, so that the process that
    created it can tell, on failure, whether anyone else has it open before removing it (an exclusive lock it can
    take without waiting). A process that opens the path re-checks, under its lock, that the path still names the
    file it locked (a store removed and re-created meanwhile is opened anew). These are ``flock`` locks, apart from
    SQLite's own ``fcntl`` locks, which they never touch."""

    def __init__(self, path: Path, readonly: bool) -> None:
        import fcntl

        self.path, self.created, self.fd = path, False, -1
        for _ in range(100):
            if readonly:
                self.fd = os.open(path, os.O_RDONLY)
            else:
                try:
                    self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
                    self.created = True
                except FileExistsError:
                    self.fd = os.open(path, os.O_RDWR)
            fcntl.flock(self.fd, fcntl.LOCK_SH)
            try:
                if os.stat(path).st_ino == os.fstat(self.fd).st_ino:
                    return
            except FileNotFoundError:
                pass
            os.close(self.fd)  # removed (and maybe re-created) while we opened it: again
            self.created = False
        raise QuantcalError(f"{path}: the store keeps being removed and re-created by another process")

    def release(self, remove_if_alone: bool = False) -> None:
        import fcntl

        if self.fd < 0:
            return
        try:
            if remove_if_alone:
                try:
                    fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # only when no other process holds it
                except OSError:
                    pass
                else:
                    for suffix in ("", "-wal", "-shm", "-journal"):
                        Path(f"{self.path}{suffix}").unlink(missing_ok=True)
        finally:
            os.close(self.fd)
            self.fd = -1


def open_store(path: str | Path, create: bool = True, readonly: bool = False) -> Store:
    """Open (or create) a store; ``readonly`` for commands that only read. Refuses files that are not quantcal
    stores, and says in one line why a store cannot be opened (locked, read-only, disk full, missing)."""
    path = Path(path)
    if path.is_dir():
        raise QuantcalError(f"{path}: a directory, not a store")
    if not path.exists():
        if not create or readonly:
            raise QuantcalError(f"{path}: store not found")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise QuantcalError(describe(exc, f"create the store {path}")) from exc
    db = holder = None
    try:
        try:
            holder = StoreHolder(path, readonly)
        except OSError:  # no lock to be had (a read-only file or folder): SQLite says below what is wrong, if anything
            holder = None
        db = _connect_readonly(path) if readonly else sqlite3.connect(str(path), timeout=LOCK_TIMEOUT_S)
        found = _tables(db)
        if not readonly:
            _write_ahead(db)
            db.execute("PRAGMA synchronous=NORMAL")
            if not found:  # a new (empty) file: lay the schema, in one transaction, so a process opening the
                # store at the same moment sees all of it or none (then waits on the lock, and adds nothing)
                db.executescript(f"BEGIN IMMEDIATE;\n{_SCHEMA}\nINSERT OR IGNORE INTO meta (key, value) VALUES "
                                 f"('schema_version', '{SCHEMA_VERSION}');\nCOMMIT;")
            else:
                _check_schema(db, path)
                if OPTIONAL_TABLES - set(found):  # CREATE TABLE IF NOT EXISTS: adds only the missing optional tables
                    db.executescript(f"BEGIN IMMEDIATE;\n{_SCHEMA}\nCOMMIT;")
        else:
            _check_schema(db, path)
    except QuantcalError:
        if db is not None:
            db.close()
        if holder is not None:
            holder.release()
        raise
    except sqlite3.DatabaseError as exc:
        if db is not None:
            db.close()
        if holder is not None:
            holder.release()
        if sqlite_cause(exc) is not None:
            raise QuantcalError(describe(exc, f"open the store {path}")) from exc
        raise QuantcalError(f"{path}: not a quantcal store ({exc})") from exc
    return Store(path, db, readonly, holder)
