"""The ledgers: one SQLite file per service instance, one row per request id.

The request id is the primary key, so a redelivered message or a retried call never
stores a second row: it is counted in `deliveries` instead, which is how duplicate
deliveries that the idempotent consumer absorbed are made visible.

SQLite runs in WAL mode with `synchronous=NORMAL`: a commit survives the process being
killed (SIGKILL), though not an operating-system crash. Calls are synchronous and run
on the event loop; a commit here takes tens of microseconds, far below a network round
trip, and batching several messages into one transaction keeps it so under load.

What does not belong on the event loop is the checkpoint, which copies the WAL back
into the database file and waits for the disk (fsync): SQLite runs one inside the
commit that fills the WAL past 1,000 pages, which at a few hundred requests a second
stalled every request in flight for 5 to 10 ms every couple of seconds. So automatic
checkpoints are off, and a thread of the ledger's own checkpoints once a second on a
connection of its own; the sqlite3 module releases the GIL while SQLite works.

Schema history (`SCHEMA_VERSION`, stored in `PRAGMA user_version`):
- 1: first version.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from service_core.contract import (
    CONTRACT_VERSION,
    Confirmation,
    StringReply,
    StringRequest,
)
from service_core.errors import ConfigError

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1

CHECKPOINT_INTERVAL_S = 1.0


class RequestStatus(StrEnum):
    """Where a request stands in the requestor's ledger."""

    REQUESTED = "requested"
    ACCEPTED = "accepted"
    STORED = "stored"
    CONFIRMED = "confirmed"
    FAILED = "failed"


_REQUESTOR_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    id TEXT PRIMARY KEY,
    length INTEGER NOT NULL,
    status TEXT NOT NULL,
    failure TEXT,
    value TEXT,
    generator TEXT,
    requested_at REAL NOT NULL,
    accepted_at REAL,
    generated_at REAL,
    stored_at REAL,
    confirmed_at REAL,
    deliveries INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
"""

_GENERATOR_SCHEMA = """
CREATE TABLE IF NOT EXISTS strings (
    id TEXT PRIMARY KEY,
    length INTEGER NOT NULL,
    value TEXT NOT NULL,
    generator TEXT NOT NULL,
    requested_at REAL NOT NULL,
    generated_at REAL NOT NULL,
    confirmed_at REAL,
    deliveries INTEGER NOT NULL DEFAULT 1,
    confirmations INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS strings_unconfirmed
    ON strings (generated_at) WHERE confirmed_at IS NULL;
"""


class Ledger:
    """An open SQLite ledger file; subclasses add the rows of one kind of service."""

    schema: str = ""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        found = self._db.execute("PRAGMA user_version").fetchone()[0]
        if found not in (0, SCHEMA_VERSION):
            self._db.close()
            raise ConfigError(
                f"ledger {self.path} has schema version {found}; this build "
                f"understands {SCHEMA_VERSION}. Use a new database path."
            )
        self._db.executescript(self.schema)
        self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        self._db.execute("PRAGMA wal_autocheckpoint=0")
        self._checkpointer = _Checkpointer(self.path)
        self._checkpointer.start()

    def close(self) -> None:
        self._checkpointer.stop()
        # Closing the last connection checkpoints what is left and removes the WAL.
        self._db.close()

    def row_counts(self) -> dict[str, int]:
        """Rows by status, for `/metrics`."""
        raise NotImplementedError

    def _begin(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def _commit(self) -> None:
        self._db.execute("COMMIT")

    def _rollback(self) -> None:
        self._db.execute("ROLLBACK")


class _Checkpointer(threading.Thread):
    """Checkpoints a ledger's WAL once a second, off the event loop's thread."""

    def __init__(self, path: Path) -> None:
        super().__init__(name=f"checkpoint {path.name}", daemon=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA busy_timeout=5000")
        self._stopping = threading.Event()

    def run(self) -> None:
        while not self._stopping.wait(CHECKPOINT_INTERVAL_S):
            self._checkpoint()

    def stop(self) -> None:
        self._stopping.set()
        self.join(timeout=10)
        self._db.close()

    def _checkpoint(self) -> None:
        # PASSIVE never waits for, nor blocks, the writer: what it cannot copy now
        # it copies the next second.
        try:
            self._db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error as exc:
            logger.warning(
                "checkpoint of %s failed: %s; retrying in a second", self.name, exc
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestRecord:
    """One row of the requestor's ledger, as `GET /strings/{id}` shows it."""

    id: str
    length: int
    status: RequestStatus
    failure: str | None
    value: str | None
    generator: str | None
    requested_at: float
    accepted_at: float | None
    generated_at: float | None
    stored_at: float | None
    confirmed_at: float | None
    deliveries: int


class RequestorLedger(Ledger):
    """The requestor's record of every request it gave an id to."""

    schema = _REQUESTOR_SCHEMA

    def record_requested(self, request: StringRequest) -> None:
        self._db.execute(
            "INSERT INTO requests (id, length, status, requested_at) "
            "VALUES (?, ?, ?, ?)",
            (request.id, request.length, RequestStatus.REQUESTED, request.requested_at),
        )

    def record_accepted(self, request_id: str, at_s: float) -> None:
        """The broker holds the request (queue variants)."""
        self._db.execute(
            "UPDATE requests SET accepted_at = ?, status = ? "
            "WHERE id = ? AND status = ?",
            (at_s, RequestStatus.ACCEPTED, request_id, RequestStatus.REQUESTED),
        )

    def record_failed(self, request_id: str, cause: str) -> None:
        """The user was told the request failed; a reply may still arrive later."""
        self._db.execute(
            "UPDATE requests SET failure = ?, status = ? WHERE id = ? AND status = ?",
            (cause, RequestStatus.FAILED, request_id, RequestStatus.REQUESTED),
        )

    def store_replies(self, replies: Sequence[StringReply], at_s: float) -> list[bool]:
        """Store each reply once; return, per reply, whether it was new.

        A reply for an id already stored is a duplicate delivery: it only increments
        `deliveries`. A reply for an id this ledger never saw (its row was lost with an
        earlier database) is stored all the same, so that no generated string is lost.
        """
        fresh: list[bool] = []
        self._begin()
        try:
            for reply in replies:
                row = self._db.execute(
                    "SELECT stored_at FROM requests WHERE id = ?", (reply.id,)
                ).fetchone()
                if row is None:
                    self._db.execute(
                        "INSERT INTO requests (id, length, status, requested_at) "
                        "VALUES (?, ?, ?, ?)",
                        (reply.id, len(reply.value), RequestStatus.REQUESTED, at_s),
                    )
                is_new = row is None or row[0] is None
                if is_new:
                    self._db.execute(
                        "UPDATE requests SET value = ?, generator = ?, "
                        "generated_at = ?, stored_at = ?, status = ?, "
                        "accepted_at = coalesce(accepted_at, ?), "
                        "deliveries = deliveries + 1 WHERE id = ?",
                        (
                            reply.value,
                            reply.generator,
                            reply.generated_at,
                            at_s,
                            RequestStatus.STORED,
                            at_s,
                            reply.id,
                        ),
                    )
                else:
                    self._db.execute(
                        "UPDATE requests SET deliveries = deliveries + 1 WHERE id = ?",
                        (reply.id,),
                    )
                fresh.append(is_new)
            self._commit()
        except BaseException:
            self._rollback()
            raise
        return fresh

    def record_confirmed(self, request_ids: Iterable[str], at_s: float) -> None:
        """The generator has been told (queue) or has asked (sync) about these ids."""
        self._begin()
        try:
            self._db.executemany(
                "UPDATE requests SET confirmed_at = coalesce(confirmed_at, ?), "
                "status = ? WHERE id = ? AND stored_at IS NOT NULL",
                [(at_s, RequestStatus.CONFIRMED, rid) for rid in request_ids],
            )
            self._commit()
        except BaseException:
            self._rollback()
            raise

    def held(self, request_ids: Sequence[str]) -> list[Confirmation]:
        """Of `request_ids`, those stored here, with their stored times."""
        found: list[Confirmation] = []
        for start in range(0, len(request_ids), 500):
            chunk = request_ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(
                f"SELECT id, stored_at FROM requests "
                f"WHERE id IN ({marks}) AND stored_at IS NOT NULL",
                chunk,
            ).fetchall()
            found.extend(
                Confirmation(version=CONTRACT_VERSION, id=rid, stored_at=stored)
                for rid, stored in rows
            )
        return found

    def get(self, request_id: str) -> RequestRecord | None:
        row = self._db.execute(
            "SELECT id, length, status, failure, value, generator, requested_at, "
            "accepted_at, generated_at, stored_at, confirmed_at, deliveries "
            "FROM requests WHERE id = ?",
            (request_id,),
        ).fetchone()
        if row is None:
            return None
        return RequestRecord(
            id=row[0],
            length=row[1],
            status=RequestStatus(row[2]),
            failure=row[3],
            value=row[4],
            generator=row[5],
            requested_at=row[6],
            accepted_at=row[7],
            generated_at=row[8],
            stored_at=row[9],
            confirmed_at=row[10],
            deliveries=row[11],
        )

    def row_counts(self) -> dict[str, int]:
        rows = self._db.execute(
            "SELECT status, count(*) FROM requests GROUP BY status"
        ).fetchall()
        counts = {status.value: 0 for status in RequestStatus}
        counts.update(dict(rows))
        return counts


@dataclass(frozen=True, slots=True)
class Generated:
    """The outcome of asking the generator ledger for a request's string."""

    reply: StringReply
    is_new: bool


class GeneratorLedger(Ledger):
    """A generator instance's record of every string it generated."""

    schema = _GENERATOR_SCHEMA

    def generate(
        self,
        requests: Sequence[StringRequest],
        *,
        generator: str,
        make_value: Callable[[int], str],
        at_s: float,
    ) -> list[Generated]:
        """Generate and store a string for each request, once per id.

        A request whose id is already here (a redelivery, a retried call) gets the
        string stored the first time, so a repeated reply carries the same value.
        """
        results: list[Generated] = []
        self._begin()
        try:
            for request in requests:
                row = self._db.execute(
                    "SELECT value, generator, generated_at FROM strings WHERE id = ?",
                    (request.id,),
                ).fetchone()
                if row is None:
                    value = make_value(request.length)
                    self._db.execute(
                        "INSERT INTO strings (id, length, value, generator, "
                        "requested_at, generated_at) VALUES (?, ?, ?, ?, ?, ?)",
                        (
                            request.id,
                            request.length,
                            value,
                            generator,
                            request.requested_at,
                            at_s,
                        ),
                    )
                    reply = StringReply(
                        version=CONTRACT_VERSION,
                        id=request.id,
                        value=value,
                        generated_at=at_s,
                        generator=generator,
                    )
                else:
                    self._db.execute(
                        "UPDATE strings SET deliveries = deliveries + 1 WHERE id = ?",
                        (request.id,),
                    )
                    reply = StringReply(
                        version=CONTRACT_VERSION,
                        id=request.id,
                        value=row[0],
                        generated_at=row[2],
                        generator=row[1],
                    )
                results.append(Generated(reply=reply, is_new=row is None))
            self._commit()
        except BaseException:
            self._rollback()
            raise
        return results

    def mark_confirmed(
        self, confirmations: Sequence[Confirmation], at_s: float
    ) -> list[bool]:
        """Mark each id received; return, per confirmation, whether it was the first.

        A confirmation for an id this ledger does not hold is reported as not new and
        changes nothing; the caller decides whether that is an error.
        """
        fresh: list[bool] = []
        self._begin()
        try:
            for confirmation in confirmations:
                cursor = self._db.execute(
                    "UPDATE strings SET confirmed_at = coalesce(confirmed_at, ?), "
                    "confirmations = confirmations + 1 WHERE id = ? "
                    "RETURNING confirmations",
                    (at_s, confirmation.id),
                )
                row = cursor.fetchone()
                fresh.append(row is not None and row[0] == 1)
            self._commit()
        except BaseException:
            self._rollback()
            raise
        return fresh

    def unconfirmed_ids(self, limit: int) -> list[str]:
        """The oldest ids not yet confirmed, for the sync variant's polling."""
        rows = self._db.execute(
            "SELECT id FROM strings WHERE confirmed_at IS NULL "
            "ORDER BY generated_at LIMIT ?",
            (limit,),
        ).fetchall()
        return [row[0] for row in rows]

    def unconfirmed_page(
        self, limit: int, after: tuple[float, str] | None = None
    ) -> list[tuple[float, str]]:
        """Up to `limit` unconfirmed `(generated_at, id)` pairs after `after`.

        A cursor over the whole backlog, in generation order, for the sync variant's
        polling. The oldest-first `unconfirmed_ids` keeps returning ids the requestor
        will never hold (their reply was lost with a timed-out call); once there are
        `limit` of those they fill every batch. Page by page, every id gets its turn.
        """
        after_s, after_id = after if after is not None else (-1.0, "")
        rows = self._db.execute(
            "SELECT generated_at, id FROM strings WHERE confirmed_at IS NULL "
            "AND generated_at >= ? AND (generated_at > ? OR id > ?) "
            "ORDER BY generated_at, id LIMIT ?",
            (after_s, after_s, after_id, limit),
        ).fetchall()
        return [(row[0], row[1]) for row in rows]

    def holds(self, request_id: str) -> bool:
        row = self._db.execute(
            "SELECT 1 FROM strings WHERE id = ?", (request_id,)
        ).fetchone()
        return row is not None

    def row_counts(self) -> dict[str, int]:
        total, confirmed = self._db.execute(
            "SELECT count(*), count(confirmed_at) FROM strings"
        ).fetchone()
        return {"generated": total, "confirmed": confirmed}
