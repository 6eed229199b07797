"""The expiry sweep trigger (``expiry_sweep``, a timer): send the removal of every time-bound grant whose pending
removal is due (`IntentGate.sweep`), so that an expiry cannot fail open; one log line says how many."""

from __future__ import annotations

import logging

from shared.core.messaging import MessageSender
from shared.service.gate import IntentGate

__all__ = ["ExpirySweep"]

_log = logging.getLogger(__name__)


class ExpirySweep:
    """The expiry sweep for one process (built by the composition root)."""

    def __init__(self, *, gate: IntentGate, sender: MessageSender) -> None:
        self._gate = gate
        self._sender = sender

    async def __call__(self) -> int:
        """Send the removal of every pending removal that is due; return how many were sent."""
        sent = await self._gate.sweep(self._sender)
        _log.log(logging.WARNING if sent else logging.INFO, "expiry sweep: %d due removal(s) sent", sent)
        return sent
