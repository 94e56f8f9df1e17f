"""``aws-sqs``: the job queue port with Amazon SQS as the transport; the records stay in the metadata DB.

As with the built-in ``arq`` adapter (:mod:`appliance.jobs.transport`), each job's durable record
(status, attempts history, result, the dead-letter list, ``job_id`` dedupe) is a row of the ``jobs``
table, written first, in the caller's transaction when there is one; SQS only carries one message
per job, ``{"tenant", "queue", "id"}``, sent once the record commits:

- **Queues.** One standard SQS queue per appliance queue and priority, shared by the tenants (the
  tenant is in each message and in the record): ``<prefix><queue>`` for priority 0,
  ``<prefix><queue>_p5`` / ``_n3`` for 5 / -3, each with a dead-letter queue ``<name>_dlq``. The
  appliance name's ``_`` and ``.`` (which SQS does not allow) become ``_u`` and ``_o``; a name longer
  than SQS's 80 characters is cut and ends with a hash. Queues are created on first use.
- **Priority.** A worker receives from the queues of the highest priority first.
- **Delay.** ``DelaySeconds`` up to 900 s. A job due later (``delay_s`` or a retry's backoff beyond
  15 minutes) is not sent then: its record's ``run_at`` stays, and the workers' sweep sends it when it
  comes within 15 minutes of being due.
- **Lease.** A received message is invisible for ``VISIBILITY_S`` seconds, extended with
  ``ChangeMessageVisibility`` while the attempt runs (as arq refreshes its lock). A killed worker's
  message comes back within seconds; the record's own lease decides whether the job may run again.
  A retry keeps its message, made visible again after the backoff; a finished job's is deleted.
- **Dead letters.** Each queue's redrive policy moves a message received ``max_receives`` times
  (``APPLIANCE_AWS_SQS_MAX_RECEIVES``, default 110: the highest ``max_attempts``, 100, plus room for
  hand-backs) without being finished to its ``_dlq`` queue. The record enforces the job's own
  ``max_attempts`` and stays the dead-letter list of the API: the sweep turns a job whose message
  reached the SQS dead-letter queue into a ``dead`` record, then deletes the message.
- **Nothing accepted is lost.** A send that fails (SQS down) is logged and repeated by the sweep;
  records left without a message (a crash between commit and send) are sent again once their
  SQS queue comes back empty while they are overdue. A duplicate message is harmless: it finds the
  record claimed or finished and is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from appliance.core.context import BackendStatus
from appliance.core.db import Database
from appliance.jobs import JobHandler
from appliance.jobs.sqlite import _Claimed, outcome_of, run_handler
from appliance.jobs.transport import Key, PushKey, TransportQueue
from appliance_aws._aws import AWS_ERRORS, AwsClients, error_code, reason
from appliance_aws.health import aws_status

__all__ = ["MAX_DELAY_S", "PREFIX_PATTERN", "SqsQueue", "queue_name"]

log = logging.getLogger("appliance.jobs")

MAX_DELAY_S = 900  # SQS's DelaySeconds limit
MAX_BATCH = 10  # SQS's batch and receive limit
VISIBILITY_S = 5  # a received message's lease; a running attempt extends it every VISIBILITY_S / 3 s
OVERDUE_S = 2.0 * VISIBILITY_S  # a due record whose queue came back empty this long after: no message
SWEEP_EVERY_S = 5.0
TARGETS_EVERY_S = 1.0  # how often a worker looks up which queues have due jobs
IDLE_POLL_S = 0.5
BUSY_POLL_S = 0.05
MAX_RECEIVES = 110
NAME_MAX = 80
PREFIX_PATTERN = r"^[A-Za-z0-9_-]{0,40}$"
_MISSING_QUEUE = {"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"}

# When the job's last attempt finished (its history is a JSON array in a TEXT column).
_LAST_FINISHED = {
    "sqlite": "json_extract(history, '$[#-1].finished_at')",
    "postgres": "(history::jsonb -> -1 ->> 'finished_at')::double precision",
}

Target = tuple[str, int]  # (appliance queue, priority): one SQS queue


def queue_name(prefix: str, queue: str, priority: int, dlq: bool = False) -> str:
    """The SQS queue for an appliance queue and priority (see the module docstring); injective."""
    name = prefix + queue.replace("_", "_u").replace(".", "_o")
    if priority:
        name += f"_p{priority}" if priority > 0 else f"_n{-priority}"
    if len(name) > NAME_MAX - 4:
        digest = hashlib.sha256(name.encode()).hexdigest()[:10]
        name = f"{name[: NAME_MAX - 4 - 12]}_h{digest}"
    return name + "_dlq" if dlq else name


@dataclass(frozen=True)
class _Queue:
    url: str
    dlq_url: str


class _PushRefused(Exception):
    """SQS answered a batch send but refused some of its messages."""


class SqsQueue(TransportQueue):
    """The ``aws-sqs`` adapter of :class:`appliance.jobs.JobQueue`; see the module docstring."""

    name = "aws-sqs"
    transport = "SQS"
    transport_errors = (*AWS_ERRORS, _PushRefused)

    def __init__(
        self,
        clients: AwsClients,
        db: Database,
        prefix: str = "appliance-",
        retention_s: float = 7 * 86400.0,
        max_receives: int = MAX_RECEIVES,
    ) -> None:
        if not re.fullmatch(PREFIX_PATTERN, prefix):
            raise ValueError(
                f"the SQS queue prefix {prefix!r} may only have letters, digits, - and _ (40 at most)"
            )
        if not 1 <= max_receives <= 1000:
            raise ValueError(
                f"max_receives={max_receives} must be between 1 and 1000 (SQS's maxReceiveCount)"
            )
        super().__init__(db, retention_s=retention_s)
        self.clients = clients
        self.prefix = prefix
        self.max_receives = max_receives
        self._queues: dict[Target, _Queue] = {}
        self._creating: dict[Target, asyncio.Lock] = {}
        self._unpushed: dict[Key, PushKey] = {}
        self._targets: list[Target] = []
        self._targets_at = 0.0
        self._empty: dict[Target, float] = {}  # when a receive last found nothing
        self._horizon = 0.0  # long-delayed jobs due up to here have been sent by this process's sweep
        self._last_push_sweep = 0.0
        self._ran = 0
        self._handlers: dict[str, JobHandler] = {}
        self._acks: list[tuple[str, str, int | None]] = []  # (queue url, receipt, visibility or None: delete)
        self._ack_task: asyncio.Task[None] | None = None
        self._working = 0
        self._stopped = asyncio.Event()
        self._stopped.set()

    async def _sqs(self) -> Any:
        return await self.clients.client("sqs")

    async def close(self) -> None:
        await super().close()
        if self._working:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopped.wait(), self.stop_wait_s + 10)
        await self.clients.close()

    # -------------------------------------------------------------- queues ---

    async def _queue(self, target: Target) -> _Queue:
        """The SQS queue (and its dead-letter queue) of ``target``, created with its redrive policy if missing."""
        known = self._queues.get(target)
        if known is not None:
            return known
        lock = self._creating.setdefault(target, asyncio.Lock())
        async with lock:
            if target not in self._queues:
                sqs = await self._sqs()
                name = queue_name(self.prefix, *target)
                dlq_url = await self._create(sqs, name + "_dlq", {"MessageRetentionPeriod": "1209600"})
                attributes = await sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])
                redrive = {
                    "deadLetterTargetArn": attributes["Attributes"]["QueueArn"],
                    "maxReceiveCount": str(self.max_receives),
                }
                url = await self._create(
                    sqs,
                    name,
                    {
                        "VisibilityTimeout": str(VISIBILITY_S),
                        "MessageRetentionPeriod": "1209600",
                        "RedrivePolicy": json.dumps(redrive),
                    },
                )
                self._queues[target] = _Queue(url, dlq_url)
            return self._queues[target]

    async def _create(self, sqs: Any, name: str, attributes: dict[str, str]) -> str:
        try:
            answer = await sqs.create_queue(QueueName=name, Attributes=attributes)
        except AWS_ERRORS as exc:
            if error_code(exc) not in ("QueueAlreadyExists", "QueueNameExists"):
                raise
            answer = await sqs.get_queue_url(QueueName=name)  # exists with other settings: use it as it is
        return str(answer["QueueUrl"])

    def _forget(self, target: Target, exc: BaseException) -> None:
        if error_code(exc) in _MISSING_QUEUE:
            self._queues.pop(target, None)  # deleted behind our back: created again on next use

    # ---------------------------------------------------------------- push ---

    async def push_keys(self, jobs: list[PushKey]) -> None:
        """Send one message per job due within 15 minutes (``DelaySeconds``); later ones wait for the sweep."""
        now = time.time()
        by_target: dict[Target, list[PushKey]] = {}
        for job in jobs:
            if job[3] - now <= MAX_DELAY_S:
                by_target.setdefault((job[1], job[4]), []).append(job)
        chunks = [
            (t, js[i : i + MAX_BATCH]) for t, js in by_target.items() for i in range(0, len(js), MAX_BATCH)
        ]
        results = await asyncio.gather(
            *(self._send(t, chunk, now) for t, chunk in chunks), return_exceptions=True
        )
        failed: list[PushKey] = []
        errors: list[BaseException] = []
        for (_, chunk), result in zip(chunks, results, strict=True):
            if isinstance(result, BaseException):
                if not isinstance(result, self.transport_errors):
                    raise result
                failed.extend(chunk)
                errors.append(result)
            else:
                failed.extend(result)
        for target in by_target:
            if target not in self._targets:
                self._targets.append(target)
        self.wake()
        if failed:
            self.push_failed(failed, errors[0] if errors else _PushRefused("SQS refused some messages"))

    async def _send(self, target: Target, chunk: list[PushKey], now: float) -> list[PushKey]:
        """One ``SendMessageBatch``; returns the jobs SQS refused."""
        entries = [
            {
                "Id": str(index),
                "MessageBody": json.dumps({"tenant": tenant, "queue": queue, "id": job_id}),
                "DelaySeconds": min(MAX_DELAY_S, max(0, math.ceil(due_at - now))),
            }
            for index, (tenant, queue, job_id, due_at, _) in enumerate(chunk)
        ]
        try:
            queue = await self._queue(target)
            answer = await (await self._sqs()).send_message_batch(QueueUrl=queue.url, Entries=entries)
        except AWS_ERRORS as exc:
            self._forget(target, exc)
            raise
        return [chunk[int(failure["Id"])] for failure in answer.get("Failed", [])]

    def push_failed(self, jobs: list[PushKey], exc: BaseException) -> None:
        for job in jobs:
            self._unpushed[job[:3]] = job
        log.warning("could not send %d job(s) to SQS (the sweep will retry): %s", len(jobs), reason(exc))

    # --------------------------------------------------------------- sweep ---

    async def _sweep(self, force: bool = False) -> None:
        """Send what has no message: failed sends, jobs now within 15 minutes of due, lost messages;
        turn jobs whose message reached an SQS dead-letter queue into dead records."""
        now = time.time()
        if not force and now - self._last_push_sweep < SWEEP_EVERY_S:
            return
        self._last_push_sweep = now
        await self.prune()
        retry, self._unpushed = list(self._unpushed.values()), {}
        horizon = now + MAX_DELAY_S
        # Jobs that were more than 15 minutes from due when they got their due time (a long delay_s or
        # backoff) and were not sent then; they are sent once, as they come within 15 minutes.
        rows = await self.db.fetchall(
            "SELECT tenant_id, queue, id, priority, due_at FROM jobs WHERE status = 'queued'"
            " AND due_at > ? AND due_at <= ? AND (CASE WHEN attempts = 0 THEN run_at - created_at"
            f" ELSE due_at - {_LAST_FINISHED[self.db.dialect]} END) > ?"
            " ORDER BY due_at LIMIT 1000",
            (self._horizon, horizon, MAX_DELAY_S),
        )
        coming = [(r["tenant_id"], r["queue"], r["id"], r["due_at"], r["priority"]) for r in rows]
        self._horizon = coming[-1][3] if len(coming) == 1000 else horizon
        lost: list[PushKey] = []
        empty, self._empty = self._empty, {}
        for target, empty_at in empty.items():
            if now - empty_at < SWEEP_EVERY_S + OVERDUE_S:
                overdue = await self.overdue(empty_at - OVERDUE_S, *target)
                if overdue and await self._holds_nothing(target):
                    lost.extend(overdue)
        jobs = list({job[:3]: job for job in retry + coming + lost}.values())
        if jobs:
            try:
                await self.push_keys(jobs)
            except self.transport_errors as exc:
                self.push_failed(jobs, exc)
        for target in list(self._targets):
            await self._dead_letters(target)

    async def _holds_nothing(self, target: Target) -> bool:
        """Whether SQS confirms the queue has no visible or delayed message (a short-polling receive may
        come back empty while it does: it samples SQS's servers)."""
        queue = self._queues.get(target)
        if queue is None:
            return False
        names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesDelayed"]
        try:
            answer = await (await self._sqs()).get_queue_attributes(QueueUrl=queue.url, AttributeNames=names)
        except AWS_ERRORS as exc:
            self._forget(target, exc)
            return False
        return all(int(answer["Attributes"].get(name, 0)) == 0 for name in names)

    async def _dead_letters(self, target: Target) -> None:
        """Record as dead the jobs whose message SQS moved to the queue's dead-letter queue."""
        queue = self._queues.get(target)
        if queue is None:
            return
        sqs = await self._sqs()
        try:
            answer = await sqs.receive_message(
                QueueUrl=queue.dlq_url,
                MaxNumberOfMessages=MAX_BATCH,
                WaitTimeSeconds=0,
                AttributeNames=["ApproximateReceiveCount"],
            )
        except AWS_ERRORS as exc:
            self._forget(target, exc)
            log.warning("could not read the SQS dead-letter queue of %r: %s", target[0], reason(exc))
            return
        messages = answer.get("Messages", [])
        if not messages:
            return
        now = time.time()
        error = f"SQS moved the job's message to its dead-letter queue after {self.max_receives} receive(s)"
        async with self.db.transaction() as tx:
            for message in messages:
                key = _key_of(message)
                if key is None:
                    continue
                await tx.execute(
                    "UPDATE jobs SET status = 'dead', lease = NULL, finished_at = ?, error = ?"
                    " WHERE tenant_id = ? AND queue = ? AND id = ?"
                    " AND (status = 'queued' OR (status = 'running' AND due_at <= ?))",
                    (now, error, *key, now),
                )
        self._ack([(queue.dlq_url, m["ReceiptHandle"], None) for m in messages])

    # ------------------------------------------------------------- workers ---

    async def run(self, handlers: Callable[[], dict[str, JobHandler]], concurrency: int) -> None:
        await self._work(handlers(), concurrency, until_idle=False)

    async def drain(self, handlers: dict[str, JobHandler], concurrency: int) -> int:
        return await self._work(handlers, concurrency, until_idle=True)

    async def _work(self, handlers: dict[str, JobHandler], concurrency: int, until_idle: bool) -> int:
        """Receive from the queues with due jobs, highest priority first; run each message's job."""
        self._handlers = handlers
        self._working += 1
        self._stopped.clear()
        inflight: set[asyncio.Task[None]] = set()
        ran = self._ran
        try:
            while not self._closing:
                try:
                    await self._sweep()
                    received = await self._receive_into(inflight, concurrency)
                except AWS_ERRORS as exc:
                    if until_idle:
                        raise
                    log.warning("receiving jobs from SQS failed: %s", reason(exc))
                    received = 0
                    await asyncio.sleep(IDLE_POLL_S)
                if received and len(inflight) < concurrency:
                    continue  # there may be more right now
                if until_idle and not received and not inflight:
                    if await self._idle():
                        return self._ran - ran
                    await self._sweep(force=True)
                    self._targets_at = 0.0
                timeout = BUSY_POLL_S if received or until_idle else IDLE_POLL_S
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._signal.wait(), timeout)
                self._signal.clear()
        finally:
            await self._stop_tasks(inflight)
            self._working -= 1
            if not self._working:
                self._stopped.set()
        return self._ran - ran

    async def _receive_into(self, inflight: set[asyncio.Task[None]], concurrency: int) -> int:
        now = time.time()
        if now - self._targets_at > TARGETS_EVERY_S:
            rows = await self.db.fetchall(
                "SELECT DISTINCT queue, priority FROM jobs"
                " WHERE status IN ('queued', 'running') AND due_at <= ?",
                (now + 1,),
            )
            self._targets = [(r["queue"], r["priority"]) for r in rows]
            self._targets_at = now
        received = 0
        for target in sorted(self._targets, key=lambda t: (-t[1], random.random())):
            free = concurrency - len(inflight)
            if free <= 0:
                break
            queue = await self._queue(target)
            try:
                answer = await (await self._sqs()).receive_message(
                    QueueUrl=queue.url,
                    MaxNumberOfMessages=min(MAX_BATCH, free),
                    VisibilityTimeout=VISIBILITY_S,
                    WaitTimeSeconds=0,
                )
            except AWS_ERRORS as exc:
                self._forget(target, exc)
                raise
            messages = answer.get("Messages", [])
            if not messages:
                self._empty[target] = time.time()
            for message in messages:
                task = asyncio.create_task(self._handle(queue.url, message))
                inflight.add(task)
                task.add_done_callback(self._finished(inflight))
            received += len(messages)
        return received

    def _finished(self, inflight: set[asyncio.Task[None]]) -> Callable[[asyncio.Task[None]], None]:
        def done(task: asyncio.Task[None]) -> None:
            inflight.discard(task)
            self._signal.set()

        return done

    async def _handle(self, url: str, message: dict[str, Any]) -> None:
        """One message: claim the job's record, run one attempt, record the outcome, settle the message."""
        receipt = message["ReceiptHandle"]
        key = _key_of(message)
        if key is None:
            log.warning("dropping an SQS message that is not an appliance job: %.200s", message.get("Body"))
            self._ack([(url, receipt, None)])
            return
        item: _Claimed | None = None
        try:
            claim = await self._writes.claim(key)
            if claim is None:  # finished, gone, or a duplicate of a message being handled
                self._ack([(url, receipt, None)])
                return
            if isinstance(claim, float):  # not due yet, or another attempt holds the lease
                self._ack([(url, receipt, math.ceil(claim) if claim <= MAX_DELAY_S else None)])
                return
            item = claim
            self._ran += 1
            heartbeat = asyncio.create_task(self._hold(url, receipt))
            try:
                outcome = outcome_of(item, *await run_handler(self._handlers.get(item.job.type), item.job))
            finally:
                heartbeat.cancel()
            await self._writes.finish(outcome)
        except asyncio.CancelledError:
            if item is not None:
                await self.release(item)
            self._ack([(url, receipt, 0)])
            raise
        except Exception as exc:  # the metadata DB failed: the message comes back after its lease
            log.error("job %s/%s/%s could not be handled: %s: %s", *key, type(exc).__name__, exc)
            return
        wait = outcome.due_at - time.time()
        if outcome.status == "queued" and wait <= MAX_DELAY_S:
            self._ack([(url, receipt, max(0, math.ceil(wait)))])  # the same message, after the backoff
        else:
            self._ack([(url, receipt, None)])  # finished, or a retry beyond 15 minutes (the sweep sends it)

    async def _hold(self, url: str, receipt: str) -> None:
        """Keep a running attempt's message invisible (its lease), as arq refreshes its in-progress lock."""
        with contextlib.suppress(*AWS_ERRORS):
            while True:
                await asyncio.sleep(VISIBILITY_S / 3)
                sqs = await self._sqs()
                await sqs.change_message_visibility(
                    QueueUrl=url, ReceiptHandle=receipt, VisibilityTimeout=VISIBILITY_S
                )

    def _ack(self, acks: list[tuple[str, str, int | None]]) -> None:
        """Delete messages (``None``) or make them visible again after some seconds, in batches."""
        self._acks.extend(acks)
        if self._ack_task is None or self._ack_task.done():
            self._ack_task = asyncio.create_task(self._flush_acks())

    async def _flush_acks(self) -> None:
        await asyncio.sleep(0)  # let the other attempts that end now add theirs
        while self._acks:
            acks, self._acks = self._acks, []
            groups: dict[tuple[str, bool], list[tuple[str, int | None]]] = {}
            for url, receipt, visibility in acks:
                groups.setdefault((url, visibility is None), []).append((receipt, visibility))
            calls = []
            sqs = await self._sqs()
            for (url, delete), items in groups.items():
                for start in range(0, len(items), MAX_BATCH):
                    batch = items[start : start + MAX_BATCH]
                    if delete:
                        deletes = [{"Id": str(i), "ReceiptHandle": r} for i, (r, _) in enumerate(batch)]
                        calls.append(sqs.delete_message_batch(QueueUrl=url, Entries=deletes))
                    else:
                        entries: list[dict[str, Any]] = [
                            {"Id": str(i), "ReceiptHandle": r, "VisibilityTimeout": v}
                            for i, (r, v) in enumerate(batch)
                        ]
                        calls.append(sqs.change_message_visibility_batch(QueueUrl=url, Entries=entries))
            for result in await asyncio.gather(*calls, return_exceptions=True):
                if isinstance(result, BaseException):
                    # The message comes back after its lease; its record, finished, drops it then.
                    log.warning("could not settle SQS messages: %s", reason(result))

    async def _stop_tasks(self, inflight: set[asyncio.Task[None]]) -> None:
        """Let running attempts finish for a moment, then cancel the rest (they hand their jobs back)."""
        pending = set(inflight)
        if pending and self._closing:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait(pending, timeout=self.stop_wait_s)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if self._ack_task is not None:
            with contextlib.suppress(Exception):
                await self._ack_task

    # --------------------------------------------------------------- admin ---

    async def health(self) -> BackendStatus:
        async def probe() -> str:
            sqs = await self._sqs()
            answer = await sqs.list_queues(**({"QueueNamePrefix": self.prefix} if self.prefix else {}))
            count = sum(1 for url in answer.get("QueueUrls", []) if not url.endswith("_dlq"))
            return f"SQS at {sqs.meta.endpoint_url}: {count} job queue(s) named {self.prefix}*"

        return await aws_status(
            "jobs", self.name, self.clients, probe, "check the AWS credentials, region and SQS permissions"
        )

    async def purge(self, tenant: str) -> None:
        """Nothing to remove from SQS: a deleted tenant's messages find no record and are dropped when received."""


def _key_of(message: dict[str, Any]) -> Key | None:
    try:
        body = json.loads(message["Body"])
        key = (body["tenant"], body["queue"], body["id"])
    except (ValueError, KeyError, TypeError):
        return None
    return key if all(isinstance(part, str) for part in key) else None
