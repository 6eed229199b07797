"""Dead-letter tooling: list, show, resubmit and purge the grants queue's dead letters.

Resubmit moves one message at a time and never loses one: it peek-locks a dead letter, sends a fresh copy,
and completes the dead letter only after the send succeeded. The copy keeps the body and
``originalMessageId``; it drops ``attempt`` / ``firstAttemptAt`` (the app counts attempts from 1 again), keeps when
the request first arrived (``arrivedAt``, else the dead letter's enqueue time: never a newer intent than it was) and
carries ``resubmission`` (8 hex digits). A dead letter the app sealed (its own message: a retry copy, an expiry
removal, an HR event's grant) is copied with every property as it is, plus ``resubmittedFrom`` (its MessageId): the
app checks the seal against that id, believes the properties, and counts the attempts afresh itself. The copy's
MessageId is ``~resubmit:<digest>:<hex>`` (the digest of the original MessageId and the body) and the app's retry
copies of it derive from the resubmission too, so duplicate detection drops neither. The ledger sees the same
request again (the same original MessageId, made when it first arrived), so it runs, and it is superseded if a newer
intent for its member and target came since.
A failed send abandons the dead letter (it stays in the dead-letter queue). Interrupted between the send and the
completion, the dead letter stays too and the message exists twice: the ledger absorbs the second as the same
request, or it is a duplicate grant, which is harmless (grants are idempotent); nothing is lost.

Dead letters the filter does not select stay locked until the pass ends, so the next lock reaches the
next message, and are then abandoned (which, on Service Bus as locally, adds one to their delivery count).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Final, TextIO

from grants_common.printable import printable
from grants_common.queues import Backend, BackendOpener, HeldDeadLetter, Outgoing
from shared.core.messaging import (
    ARRIVED_AT,
    ATTEMPT,
    DEAD_LETTER_ERROR_DESCRIPTION,
    DEAD_LETTER_REASON,
    FIRST_ATTEMPT_AT,
    ORIGINAL_MESSAGE_ID,
    RESUBMISSION,
    RESUBMITTED_FROM,
    SEAL,
    DeadLetter,
    derived_message_id,
)

__all__ = ["Selector", "print_list", "print_show", "purge", "resubmit", "resubmitted_copy", "run_dlq", "select"]

#: Dropped from a resubmitted copy: the app's attempt bookkeeping (kept, sealed, on the app's own messages: the first
#: two), the previous resubmission, and the reason Service Bus adds to a dead letter's application properties.
_RESET: Final = (ATTEMPT, FIRST_ATTEMPT_AT, RESUBMISSION, DEAD_LETTER_REASON, DEAD_LETTER_ERROR_DESCRIPTION)


@dataclass(frozen=True, slots=True)
class Selector:
    """Which dead letters a command applies to: by reason code, by request id or MessageId, or all."""

    reason: str | None = None
    id: str | None = None

    def __call__(self, info: DeadLetter) -> bool:
        if self.reason is not None and info.reason != self.reason:
            return False
        return self.id is None or self.id in (info.message_id, info.request_id, info.original_message_id)


def select(backend: Backend, selector: Selector) -> list[DeadLetter]:
    """The dead letters `selector` selects, without locking them."""
    return [info for info in backend.peek_dead_letters() if selector(info)]


def resubmitted_copy(info: DeadLetter, *, suffix: str | None = None) -> Outgoing:
    """The fresh copy of a dead letter (see the module's docstring)."""
    sealed = SEAL in info.application_properties  # the seal covers the app's properties: keep them as they are
    dropped = _RESET[2:] if sealed else _RESET
    properties = {key: value for key, value in info.application_properties.items() if key not in dropped}
    if sealed:
        properties[RESUBMITTED_FROM] = info.message_id
    else:
        properties[ORIGINAL_MESSAGE_ID] = info.original_message_id
        if ARRIVED_AT not in properties and info.enqueued_time is not None:
            properties[ARRIVED_AT] = info.enqueued_time.isoformat()
    properties[RESUBMISSION] = suffix or uuid.uuid4().hex[:8]
    body_hash = hashlib.sha256(info.body).hexdigest()
    return Outgoing(
        body=info.body,
        message_id=derived_message_id(
            "resubmit", info.original_message_id, body_hash, suffix=str(properties[RESUBMISSION])
        ),
        application_properties=properties,
    )


def resubmit(
    backend: Backend, selector: Selector, *, on_moved: Callable[[DeadLetter, Outgoing], None] = lambda i, o: None
) -> list[Outgoing]:
    """Move each selected dead letter back to the queue as a fresh copy; return the copies sent."""
    sent: list[Outgoing] = []
    with _pass(backend) as held_for_selection:
        for held in held_for_selection(selector):
            copy = resubmitted_copy(held.info)
            try:
                backend.send(copy)
            except BaseException:
                backend.abandon(held)
                raise
            backend.complete(held)
            sent.append(copy)
            on_moved(held.info, copy)
    return sent


def purge(backend: Backend, selector: Selector) -> list[DeadLetter]:
    """Delete the selected dead letters for good; return what was deleted."""
    deleted: list[DeadLetter] = []
    with _pass(backend) as held_for_selection:
        for held in held_for_selection(selector):
            backend.complete(held)
            deleted.append(held.info)
    return deleted


@contextmanager
def _pass(backend: Backend) -> Iterator[Callable[[Selector], Iterator[HeldDeadLetter]]]:
    """Yields a generator of locked, selected dead letters; the others stay locked until the pass ends."""
    skipped: list[HeldDeadLetter] = []

    def held_for_selection(selector: Selector) -> Iterator[HeldDeadLetter]:
        while (held := backend.lock_next_dead_letter()) is not None:
            if selector(held.info):
                yield held
            else:
                skipped.append(held)

    try:
        yield held_for_selection
    finally:
        for held in skipped:
            backend.abandon(held)


def print_list(dead_letters: list[DeadLetter], out: TextIO) -> None:
    """A table: requestId, reason, description head, attempts, enqueued time."""
    header = f"{'requestId':<28} {'reason':<26} {'tries':>5}  {'enqueued (UTC)':<19}  description"
    out.write(header + "\n" + "-" * len(header) + "\n")
    for info in dead_letters:  # everything from the message is escaped (`printable`)
        request_id = printable(info.request_id or f"({info.message_id})")[:28]
        enqueued = info.enqueued_time.strftime("%Y-%m-%d %H:%M:%S") if info.enqueued_time else "-"
        out.write(
            f"{request_id:<28} {printable(info.reason or '-'):<26} {info.attempts:>5}  {enqueued:<19}  "
            f"{_clip(printable(info.description or ''), 60)}\n"
        )
    out.write(f"{len(dead_letters)} dead letter(s)\n")


def print_show(info: DeadLetter, out: TextIO) -> None:
    """Everything about one dead letter: ids, reason, full description, properties and body (escaped: `printable`)."""
    out.write(
        f"messageId:        {printable(info.message_id)}\n"
        f"requestId:        {printable(info.request_id or '-')}\n"
        f"sequenceNumber:   {info.sequence_number}\n"
        f"reason:           {printable(info.reason or '-')}\n"
        f"description:      {printable(info.description or '-')}\n"
        f"attempts:         {info.attempts}\n"
        f"enqueued (UTC):   {info.enqueued_time.isoformat() if info.enqueued_time else '-'}\n"
        f"properties:       {printable(json.dumps(dict(info.application_properties), ensure_ascii=False))}\n"
        f"body:             {printable(info.body.decode('utf-8', errors='replace'))}\n"
    )


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def run_dlq(
    *,
    action: str,
    selector: Selector,
    dry_run: bool,
    yes: bool,
    open_backend: BackendOpener,
    queue: str,
    out: TextIO,
) -> int:
    """``python -m shared dlq list|show|resubmit|purge``: exit code 0 on success, 1 when ``show`` finds
    nothing or a resubmit was interrupted, 2 for a purge without ``--yes``."""
    if action == "purge" and not yes:
        out.write("purge deletes dead letters for good: add --yes to confirm (nothing was deleted)\n")
        return 2
    with open_backend() as backend:
        if action == "list":
            print_list(select(backend, selector), out)
        elif action == "show":
            found = select(backend, selector)
            if not found:
                out.write(f"no dead letter with requestId, MessageId or originalMessageId {printable(selector.id)}\n")
                return 1
            for info in found:
                print_show(info, out)
        elif action == "purge":
            deleted = purge(backend, selector)
            out.write(f"purged {len(deleted)} dead letter(s)\n")
        elif dry_run:
            chosen = select(backend, selector)
            print_list(chosen, out)
            out.write(f"dry run: would resubmit {len(chosen)} dead letter(s); nothing was changed\n")
        else:
            return _resubmit(backend, selector, out)
    return 0


def _resubmit(backend: Backend, selector: Selector, out: TextIO) -> int:
    def moved(info: DeadLetter, copy: Outgoing) -> None:
        out.write(
            f"resubmitted {printable(info.request_id or info.message_id)} ({printable(info.reason)}) as "
            f"{printable(copy.message_id)}\n"
        )

    try:
        sent = resubmit(backend, selector, on_moved=moved)
    except KeyboardInterrupt:
        out.write("interrupted: the dead letters not reported above are still in the dead-letter queue\n")
        return 1
    out.write(f"resubmitted {len(sent)} dead letter(s)\n")
    if sent:
        backend.drain(out)
    return 0
