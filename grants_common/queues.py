"""What the operator commands (``grants submit``, ``grants dlq``) and the local host share: the queue a command
sends to and whose dead letters it reads (`Backend`) and the values that cross it. The Service Bus backend lives in
`grants_cli.backends`, the local ones in `grants_local.backend` (the local namespace) and `grants_local.serve_backend`
(a running serve-local); neither package imports the other's backends."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Final, Protocol, TextIO

from shared.core.messaging import DeadLetter, PropertyValue

__all__ = ["CONTENT_TYPE", "Backend", "BackendOpener", "HeldDeadLetter", "Outgoing", "SendReport"]

CONTENT_TYPE: Final = "application/json"


@dataclass(frozen=True, slots=True, kw_only=True)
class Outgoing:
    """A message to send: body, MessageId and application properties."""

    body: bytes
    message_id: str
    application_properties: Mapping[str, PropertyValue] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class SendReport:
    """What a batched send did; ``duplicates`` is known only where the queue tells (the local one)."""

    sent: int
    batches: int
    duplicates: int | None


@dataclass(frozen=True, slots=True)
class HeldDeadLetter:
    """A peek-locked dead letter: settle it with `Backend.complete` or `Backend.abandon`."""

    info: DeadLetter
    handle: Any


class Backend(Protocol):
    """A queue the operator commands send to and whose dead letters they read and settle."""

    def send_batches(self, messages: Sequence[Outgoing], *, progress: Callable[[int], None]) -> SendReport:
        """Send `messages` in as few batches as fit; call `progress` with the count after each batch."""
        ...

    def send(self, message: Outgoing) -> None:
        """Send one message; raise if it was not accepted."""
        ...

    def peek_dead_letters(self) -> list[DeadLetter]:
        """The dead-letter sub-queue, without locking anything."""
        ...

    def lock_next_dead_letter(self) -> HeldDeadLetter | None:
        """Peek-lock the next unlocked dead letter, or None when there is none."""
        ...

    def complete(self, held: HeldDeadLetter) -> None: ...

    def abandon(self, held: HeldDeadLetter) -> None: ...

    def drain(self, out: TextIO) -> None:
        """Deliver what was sent to the app now and print the outcomes, where the backend can (locally)."""
        ...

    def follow(self, job_id: str) -> str | None:
        """The command that follows job `job_id` to its end, where the app it sends to keeps a ledger; else None."""
        ...

    def close(self) -> None: ...


#: Opens the backend a command works on (chosen once, by the command line: see `grants_cli.main`).
BackendOpener = Callable[[], AbstractContextManager[Backend]]
