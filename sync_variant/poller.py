"""How a sync generator learns that the requestor stored its strings.

Every `poll_interval_s`, the generator asks the requestor in one call which of up to
`poll_batch` of its unconfirmed ids it holds, and marks those confirmed. Every
generator instance polls on its own, so the requestor's confirmation load grows with
the number of generators: the scaling cost of this design.

The poll walks the unconfirmed backlog page by page and wraps at its end, so every id
is asked about in turn; ids the requestor will never hold (the reply was lost with a
timed-out call) stay unconfirmed and are asked about again on each pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from service_core.clock import now_s
from service_core.contract import ConfirmationAnswer, ConfirmationQuery
from service_core.errors import PeerError
from service_core.ledger import GeneratorLedger
from service_core.metrics import Registry
from sync_variant.peer import OK, PeerClient

logger = logging.getLogger(__name__)

QUERY_PATH = "/confirmations/query"


class ConfirmationPoller:
    """Polls the requestor for confirmations until stopped."""

    def __init__(
        self,
        *,
        ledger: GeneratorLedger,
        requestor: PeerClient,
        interval_s: float,
        batch: int,
        registry: Registry,
    ) -> None:
        self._ledger = ledger
        self._requestor = requestor
        self._interval_s = interval_s
        self._batch = batch
        self._cursor: tuple[float, str] | None = None
        self._failed_polls = 0
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

        self._polls = registry.counter(
            "confirmation_polls_total",
            "confirmation queries sent to the requestor, by result (ok or cause)",
        )
        self._confirmations = registry.counter(
            "confirmations_total", "strings marked confirmed for the first time"
        )

    @property
    def requestor_reachable(self) -> bool:
        """Whether the last poll, if any, got an answer."""
        return self._failed_polls == 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="confirmation-poller")

    async def stop(self) -> None:
        """Let a poll in flight finish, then sweep the whole backlog once more."""
        self._stopping.set()
        if self._task is not None:
            await self._task
        await self.sweep()

    async def sweep(self) -> None:
        """Poll from the start of the backlog to its end, or until a poll fails."""
        self._cursor = None
        while await self.poll() == self._batch:
            pass

    async def poll(self) -> int:
        """Ask about the next page of unconfirmed ids; the page's size if answered.

        A failed poll returns 0 and leaves the cursor where it was, to ask again.
        """
        page = self._ledger.unconfirmed_page(self._batch, self._cursor)
        if not page:
            self._cursor = None
            return 0

        query = ConfirmationQuery(ids=[request_id for _, request_id in page])
        try:
            answer = await self._requestor.post(QUERY_PATH, query, ConfirmationAnswer)
        except PeerError as exc:
            self._polls.inc(result=exc.cause)
            self._note_failure(exc)
            return 0
        self._polls.inc(result=OK)
        self._note_answer()

        fresh = self._ledger.mark_confirmed(answer.held, now_s())
        self._confirmations.inc(sum(fresh))
        self._cursor = page[-1] if len(page) == self._batch else None
        logger.debug(
            "confirmation poll: %d asked, %d held, %d newly confirmed",
            len(page),
            len(answer.held),
            sum(fresh),
        )
        return len(page)

    async def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.poll()
            except Exception:
                # A poll that fails for any other reason (the ledger, a bug) must
                # not end confirmations for the life of the process.
                logger.exception("confirmation poll failed unexpectedly")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval_s):
                    await self._stopping.wait()

    def _note_failure(self, exc: PeerError) -> None:
        self._failed_polls += 1
        if self._failed_polls == 1:
            logger.warning(
                "confirmation poll to %s failed (%s: %s); strings stay unconfirmed "
                "until it answers. Polling on every %s s, logged again once it does",
                self._requestor.base_url,
                exc.cause,
                exc,
                self._interval_s,
            )
        else:
            logger.debug("confirmation poll failed again: %s", exc)

    def _note_answer(self) -> None:
        if self._failed_polls:
            logger.info(
                "confirmation polls to %s answered again after %d failed",
                self._requestor.base_url,
                self._failed_polls,
            )
        self._failed_polls = 0
