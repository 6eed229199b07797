"""``make soak``: N grant messages through the registered function object and the local host, with faults.

Every choice comes from ``--seed``: the directory, the messages, and for each delivery (keyed by MessageId
and delivery count, so independent of scheduling order) the fault it meets. Time is a `ManualClock`:
backoff, ``Retry-After``, lock expiry and replication delay cost no wall time.

The model is "grants are owned" (`shared.core.pairs`): per (member, target) pair, one grant per producer; a plain
remove ends its producer's grant only, and removes the member only when no other grant holds the pair and the app
made the membership (else ``released``, naming what holds it: each grant, or a membership that was there before the
app, ``[preexisting]``, or nothing, ``[]``); a revokeAll (a right of the ``hr`` system's producers in the default
policy) ends every older grant and the membership whoever made it; newest wins only within one producer's grant.

Messages (each (container, member) pair in the messages of one kind only, so the expected final state is known),
each sent by a producer on its own queue (`grants_local.producers`: the one its body names, unless the kind says
otherwise):

- ``add``: an existing principal not yet in the container; ends ``granted`` (or ``already_member`` when an
  earlier delivery's write landed before it crashed or timed out). Final: member.
- ``add_existing``: already a member (seeded): ``already_member``. Final: member.
- ``add_late``: a principal that becomes visible 1-30 s after the start: ``granted``/``already_member``.
- ``add_missing``: a principal that never exists: dead-lettered ``MemberNotFound`` after the window.
- ``remove``: a plain remove of a seeded member (a membership the app did not make, no grant of its producer):
  ``released []``, nothing written. Final: member.
- ``revoke_all``: HR's remove with ``revokeAll`` of a seeded member (``revoked``, or ``not_member`` after an earlier
  delivery's removal landed) or of one not there (``not_member``). Final: not a member.
- ``revoke_all_refused``: a ``revokeAll`` from a producer of another system: dead-lettered ``PolicyDenied``, nothing
  written. Final: member (seeded).
- ``remove_absent``: a plain remove of an existing principal not in the container: ``released []``, nothing written.
- ``hostile``: a body the contract refuses (a C1 control or a lone surrogate in free text, an ``expiresAt`` past
  year 9999 in UTC, a key given twice, UTF-16): dead-lettered ``SchemaViolation`` / ``InvalidJson``, never written.
- ``doomed``: an add to the administrative unit deleted mid-run (when half the messages have been
  delivered once): ``granted``/``already_member`` if its write reached Graph before the deletion, else
  ``TargetNotFound``. The race is accounted for by checking that every ``204`` for that unit precedes the
  deletion in the Graph double's log, and that ``TargetNotFound`` names only that unit.
- ``race``: an add and a remove (two messages) for one user of a unit, with distinct ``requestedAt``, run
  concurrently. Not there before: the remove is the add's producer's (newest wins within its grant): the older ends
  ``superseded`` or ran first (a remove first ends a grant that made nothing: ``released []``). Seeded: the remove is
  HR's ``revokeAll``: newer, it removes the member and supersedes the add; older, it removes the member and the newer
  add grants it again, or it runs second and ends ``released`` held by the add. Final: member exactly when the add is
  newer.
- ``timebound``: an add whose ``expiresAt`` falls minutes into the run (virtual time): ``granted`` /
  ``already_member`` (or ``Expired`` when the backlog delayed it past its expiry); its expiry ends its own grant, the
  last: ``revoked`` / ``not_member``. Final: not a member.
- ``future``: an add dated in the future (an hour ahead up to the domain's last microsecond, 2099-12-31) and a
  remove for the same member and unit that arrives up to 15 minutes later (the add's producer's own; for a seeded
  member HR's ``revokeAll``): the add counts as made when it arrived, so the remove wins. Final: not a member.
- ``edge``: an add, or HR's ``revokeAll`` of a seeded member, dated at the time domain's edges inside it
  (2000-01-01T00:00:00Z, the same instant written at -01:00, 2099-12-31T23:59:59.999999Z, 2100-01-01T00:30:00+01:00),
  some adds expiring at its far end (the run's virtual clock then jumps to 2099 for their removals). Final: as asked
  (a time-bound add removed).
- ``forged``: an add carrying internal properties a producer may not set (``attempt`` 50, ``firstAttemptAt`` and
  ``arrivedAt`` in 2000, ``originalMessageId`` of another message, ``expiryOf`` naming another request, an HR event's
  or a bulk job's row on the interactive queue, a made-up ``seal``); some with a remove of the same producer made an
  hour before it arrived (the forged ``arrivedAt`` would make the add the older): ``superseded``, or ``released []``
  when it runs first. Final: member. None of it is believed: no attempt count or first attempt is forged, no removal
  is noted on the named request, no row is written.
- ``forged_source``: an add from one producer's own queue whose body names another producer's source system:
  dead-lettered ``SourceMismatch`` before any write. Final: not a member.
- ``colliding``: two producers of one source system (ticketing and itsm, bulk and ops) send the same request id, each
  for another member: two requests, each its producer's own, both granted. Final: both members.
- ``overlapping``: two or three of the registered producers hr, ticketing, bulk, itsm and ops each grant one user of a
  unit (a third of them there before the app), some time-bound, and end their grants (`OVERLAP_FATES`: kept, removed
  by the producer, expiring, both in either order; HR's remove a ``revokeAll`` half the time), the producers' steps
  interleaved at random in slots four hours apart, the first once the messages sent at the start have been worked
  through (adds may share one; each slot's work ends before the next begins, checked). `grants_local.soak_model`
  says what each step ends as: an add ``granted`` / ``already_member``; an end ``released`` naming exactly the grants
  that still hold the pair (or ``[preexisting]``, or ``[]``), else ``revoked`` / ``not_member`` when it ended the
  last grant of a membership the app made; an expiry after its producer's remove ``superseded``; and the final state:
  member exactly when some producer's grant still holds (its newest intent an add not expired, newer than any
  revokeAll), or (seeded) when no revokeAll ended a membership the app found there. A seeded member's first add in
  doubt (a fault, or a timeout, that left its write unanswered) makes the membership the app's: those pairs may end
  either way, each step's outcomes then those of the ending the directory shows.
- ``late_landing``: one producer's adds and removes of one user of a unit (not there before), each dated a second
  before it is sent, steps 30 s apart (150 s after a failed return of the lease), starting together in batches
  between the ``overlapping`` slots; a seeded script of `LATE_SCRIPTS` says what each step's first delivery meets, the
  step's other deliveries meet no fault (its own retry is answered). A held write (its client gives up) lands when the
  virtual clock reaches a seeded moment after the pair's last step and within 240 s of its delivery (the app keeps
  its doubt 300 s after the write could last have been sent): an add in flight landing after a newer remove, a remove
  after a newer add; an add and a newer remove both in flight, a still newer remove answering ``not_member`` (and the
  mirror: ``already_member``), both landing after it. A failed return of the lease: the ledger request that returns
  it after the Graph write (answered, or in flight) is answered ``503 ServerBusy`` once (`StorageFaults`): the
  answered one's request is retried once the lease ends (``already_member`` / ``not_member``), the doubt recorded when
  the lease was taken stays (120 s + 300 s). A step answered while a write of the other action is in doubt is carried
  out once more after that doubt's end (its confirming copy). Each step ends as its action does (``granted`` /
  ``already_member``, ``revoked`` / ``not_member``), its confirming copy too, or ``superseded`` by the pair's newer
  step; a remove carried out again once nothing of the app's can be there, ``released []``. Final: member exactly when
  the newest step is an add; the newest step's status in the ledger says so.
- ``squat``: a message under an id the app derives: a request id ``~expire:…``, ``~hr:…``, ``~drift-add:…`` (refused
  ``SchemaViolation``), sent under the MessageId the app would derive for another message's retry copy or a
  time-bound grant's expiry removal (the app keys those, so its own are not dropped as duplicates).
- replays (at run time): a copy of a message the app sealed (a retry copy, an expiry removal), seal and properties
  included, under another MessageId: the seal does not check out, so it is a producer's (``duplicate`` of its
  request, or refused ``SchemaViolation`` for an ``~expire`` id).
- early replays (at run time): a message the app sealed to run later (a retry copy, a confirming copy, an expiry
  removal, a copy the app queued again for its time), delivered before that time: sent again byte for byte under its
  own MessageId once duplicate detection's window has passed (when it is due later than that), or as ``dlq
  resubmit`` sends a sealed message (``resubmittedFrom``), at once. Nothing scheduled may run before its time: such a
  delivery is ``deferred`` (queued again for then), never carried out.

Every request may also end ``duplicate`` (sent again under a new MessageId), and one carried out already and delivered
again (its first delivery died before completing the message) ends a removal's end ``released []``.

Invariants beyond the outcomes: every ``released`` names exactly the holders expected; no ``released []`` of a pair
no other request changes meanwhile (a ``late_landing`` pair's included: a late landing is the app's own write) is
logged while the member is in the target (a membership the app made, or found, that it says is not there); every
time-bound grant made reaches its expiry; the final directory is the plan's; the Graph writes answered 204 per pair are
the plan's (a membership the app did not make is never removed but by a revokeAll; an overlapping pair's adds and
removals exactly as many as its ending makes; a ``late_landing`` pair's at most one per step, one per held write and
one per confirming copy that ran); every confirming copy announced ran; every late landing came within its write's
window; a ``late_landing`` pair's steps each have a terminal status, the newest one's true of the directory.

Targets: administrative units (users, groups, devices) and directory roles by object id and by template id
(users, service principals, role-assignable groups).

Faults (per delivery, seeded): Graph ``429`` with and without ``Retry-After``, ``503``, ``504``, a read
timeout (the write is held until the invocation has ended, then applied: after the client gave up), a dropped
connection, a one-shot ``401``, every token expired (``401`` for every request in flight; sometimes with the token
endpoint slow or failing the next requests; never again while an invocation that saw the last expiry still runs);
the invocation dying before the Graph call, after Graph succeeded (on complete), after the retry copy was scheduled
(on complete), while dead-lettering; the retry-copy send failing; a time-bound add made whose removal at expiry
could not be scheduled (the ledger recorded the add's answer first; retried: the retry finds the member there and
the ledger says whether the app made it, or, past the grant's expiry, ends ``Expired`` and the expiry sweep, run once
the queues are empty, ends the grant); the host answering a settlement only once the invocation has given up on
it (the delivery is ``unsettled`` and either the late answer or the redelivery after lock expiry settles it).
The ``late_landing`` pairs meet only their scripts' faults: a Graph write held until a seeded moment (`Landing`), and
the ledger's storage answering ``503 ServerBusy`` to the request returning a lease (`StorageFaults`, at the HTTP
boundary: the ledger and the gate run unchanged).
The producer side (not for ``late_landing`` steps, each sent once): a message sent twice with the same MessageId
(dropped by duplicate detection) and the same request sent again with a new MessageId (absorbed by the grant ledger as
the same request: ``duplicate``, unless the first is still in flight).

Whether and where a fault strikes is decided by events, never by how fast this machine runs: a timeout fault holds
its write until its invocation has ended (its client gave up), a stalled settlement answers once its invocation has
ended, and tokens expire again only once every invocation that saw the last expiry has ended. The app's own wall-clock
limits stay (its read timeout and settlement deadline, short here so that a fault costs little): on a loaded machine a
request or settlement slower than them takes the same transient path as the injected fault, which every invariant
allows (an add's write left in doubt so is seen in its outcome lines, ``GraphUnavailable``, like an injected one).
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import functools
import hashlib
import json
import logging
import math
import os
import random
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

import httpx

from grants_local._http import LoopbackServer, Request, Response
from grants_local.app import local_app
from grants_local.graph_double import Fault, GraphDouble
from grants_local.host import LocalHost, Source, registered_function
from grants_local.producers import declared, registry_json
from grants_local.queue import (
    DEFAULT_DUPLICATE_DETECTION_WINDOW,
    MAX_DELIVERY_COUNT_EXCEEDED,
    LocalQueue,
    LocalSender,
    ManualClock,
    SendFailedError,
)
from grants_local.run import os_environment
from grants_local.soak_model import REMOVES, Ending, Step, ending, released
from grants_local.token_endpoint import TokenEndpoint
from shared.adapters.ledger import UNCERTAIN_WINDOW, Ledger
from shared.bootstrap import LIBRARY_LOGGERS
from shared.config import Settings
from shared.core.contract import AdministrativeUnit, Guid, parse_grant
from shared.core.errors import Reason
from shared.core.intents import content_hash, expiry_removal, intent_of, pair_of
from shared.core.messaging import (
    DERIVED_PREFIX,
    NOT_BEFORE,
    PRODUCER,
    RESUBMISSION,
    RESUBMITTED_FROM,
    SEAL,
    derived_message_id,
    property_of,
)
from shared.core.statuses import Status, StatusRecord
from shared.core.times import read_time

#: The soak's virtual start (a new `ManualClock`'s time): timebound grants expire minutes after it.
EPOCH = datetime.fromtimestamp(ManualClock()(), UTC)
DOCUMENTED_REASONS = frozenset(reason.value for reason in Reason) | {MAX_DELIVERY_COUNT_EXCEEDED}
#: The app's HTTP read timeout in the soak (Graph and the ledger's Azurite; the production 15 s would cost wall time):
#: what a timeout fault costs, as it holds its write until the client gave up.
READ_TIMEOUT_SECONDS = 1.0
#: Last-resort guard (wall seconds) for a stalled settlement waiting for its invocation to end.
STALL_GUARD_SECONDS = 300.0
#: Non-tier-0 role templates (the default policy allows them): (template id, role id).
ROLES = (
    ("729827e3-9c14-49f7-bb1b-9608f156bbb8", "a1b2c3d4-0000-4000-8000-000000000001"),  # Helpdesk Administrator
    ("fdd7a751-b60b-444a-984c-02652fe8fa1c", "a1b2c3d4-0000-4000-8000-000000000002"),  # Groups Administrator
    ("4d6ac14f-3453-41d0-bef9-a3e0c569773a", "a1b2c3d4-0000-4000-8000-000000000003"),  # License Administrator
)
KINDS = {  # message kind -> weight
    "add": 45,
    "add_existing": 10,
    "add_late": 10,
    "add_missing": 5,
    "remove": 6,  # a member the app did not make, removed by a plain remove: released, the member stays
    "revoke_all": 7,  # a leaver: HR's remove with revokeAll, the member there (or not) before the app
    "revoke_all_refused": 2,  # a revokeAll from a producer the policy does not give the right to
    "remove_absent": 5,
    "doomed": 10,
    "race": 5,  # an add and a remove of one grant (or a revokeAll) with requestedAt: the newest wins
    "timebound": 4,  # an add whose expiresAt comes during the run: its removal ends it
    "hostile": 3,
    "future": 3,  # an add dated in the future, then a remove that arrives after it: the remove wins
    "edge": 3,  # times at the domain's edges, inside it
    "forged": 4,  # internal properties a producer may not set
    "squat": 2,  # ids the app derives, taken first
    "forged_source": 2,  # a producer's message naming another producer's source system
    "colliding": 2,  # two producers, one request id, different content: two requests
    "overlapping": 6,  # two or three producers' grants of one member and unit, ending one by one
    "late_landing": 4,  # one producer's adds and removes of a pair, writes landing late, the lease's return failing
}
#: Times at the domain's edges that it accepts (requestedAt); far expiries (expiresAt) at its end.
EDGE_REQUESTED = (
    "2000-01-01T00:00:00Z",
    "1999-12-31T23:30:00-01:00",
    "2099-12-31T23:59:59.999999Z",
    "2100-01-01T00:30:00+01:00",
)
EDGE_EXPIRES = ("2099-12-31T23:59:59.999999Z", "2100-01-01T00:30:00+01:00")
#: Forged on `forged` messages: a job's and an HR event's rows that no one wrote, and the properties' values.
FORGED_JOB = "job-forged"
FORGED_BY = "ticketing"  # the producer whose queue the forged messages come from
FORGED_HR_EVENT = "evt-forged"
FORGED_ATTEMPT = 50
FORGED_TIME = "2000-01-01T00:00:00+00:00"
#: Settlement deadline in the soak (GRANTS_SETTLEMENT_TIMEOUT_SECONDS): what a stalled settlement costs in wall time (it
#: answers once its invocation has given up on it).
SETTLEMENT_DEADLINE_SECONDS = 0.2
#: The share of the messages the app schedules for later that someone delivers again before their time; of those
#: due later than duplicate detection's window (10 minutes: an expiry removal, a long backoff), a larger share.
EARLY_REPLAY_RATE = 0.15
FAR_REPLAY_RATE = 0.5
#: The terminal outcomes each kind of request may end with (a ``released`` one with the holders it names, as
#: `grants_local.soak_model.released` writes them); a request whose outcomes the plan knows more exactly (its pair's
#: steps, whether its member was there) has its own set in `Soak.allowed`.
ALLOWED: dict[str, set[str]] = {
    "add": {"granted", "already_member"},
    "add_existing": {"already_member"},
    "add_late": {"granted", "already_member"},
    # the last attempt's error names the reason: a transient fault on attempt 8 gives its reason instead
    "add_missing": {
        "dead_lettered:MemberNotFound",
        "dead_lettered:GraphUnavailable",
        "dead_lettered:Throttled",
        "dead_lettered:TokenUnavailable",
    },
    # no grant of its producer, a membership the app did not make: nothing written, nothing holds it
    "remove": {released()},
    "revoke_all": {"revoked", "not_member"},  # not_member: not there, or an earlier delivery's removal landed
    "revoke_all_refused": {"dead_lettered:PolicyDenied"},
    "remove_absent": {released()},
    "doomed": {"granted", "already_member", "dead_lettered:TargetNotFound"},
    # `_race` sets each race's own (which is newer, whether the member was there)
    "race_add": {"granted", "already_member", "superseded"},
    "race_remove": {"revoked", "not_member", "superseded", released()},
    "race_revoke_all": {"revoked", "not_member"},
    # Expired: its time passed in the backlog (refused before the ledger: its own removal, recorded only once the
    # grant has expired, can never be recorded before it, as the virtual clock stands still while anything runs)
    "timebound": {"granted", "already_member", "dead_lettered:Expired"},
    # the removal ending a time-bound grant that nothing else holds
    "expiry": set(REMOVES),
    "hostile": {"dead_lettered:SchemaViolation", "dead_lettered:InvalidJson"},
    # the add counts as made when it arrived: the remove (arriving later) is newer, whichever runs first
    "future_add": {"granted", "already_member", "superseded"},
    "future_remove": set(REMOVES),
    "future_revoke_all": {"revoked", "not_member"},
    "edge_add": {"granted", "already_member"},
    "edge_revoke_all": {"revoked", "not_member"},
    "edge_timebound": {"granted", "already_member"},
    "forged": {"granted", "already_member"},
    # made an hour before the add arrived: superseded by it, or (first) the end of a grant that made nothing
    "forged_remove": {"superseded", released()},
    "squat": {"dead_lettered:SchemaViolation", "dead_lettered:InvalidJson"},
    # a producer speaks only as itself: the message is refused before any write, whatever it asks
    "forged_source": {"dead_lettered:SourceMismatch"},
    # a request id is its producer's own: each producer's request runs as its own
    "colliding": {"granted", "already_member"},
    # a ``late_landing`` pair's steps: each step's own outcome, and its confirming copy's (an older step's superseded
    # by the pair's newer one; a remove carried out again once nothing of the app's can be there, ``released []``:
    # a copy of it someone delivered early, queued again for its time, runs after the confirming copy); the newest
    # step's own set leaves superseded out (`_late_landing`)
    "late_add": {"granted", "already_member", "superseded"},
    "late_remove": {*REMOVES, "superseded"},
    # an overlapping pair's steps (overlap_add, overlap_remove, overlap_revoke_all, their expiries): each its own set,
    # from what the pair's steps end as (`grants_local.soak_model.ending`)
    # a replayed copy under another MessageId, on the queue the app sent it to: its request again (absorbed), a ~ id
    # refused, or (the queue's own producer speaking as another) refused as not its words
    "replay": {"dead_lettered:SchemaViolation", "dead_lettered:SourceMismatch", "dead_lettered:UnknownProducer"},
}
# A request sent again under a new MessageId is the same request: the ledger absorbs the second message.
ALLOWED = {kind: outcomes | {"duplicate"} for kind, outcomes in ALLOWED.items()}
#: Per delivery: fault -> probability (at most one fault per delivery).
FAULTS = {
    "graph_429_retry_after": 0.015,
    "graph_429_no_retry_after": 0.008,
    "graph_503": 0.012,
    "graph_504": 0.008,
    "graph_read_timeout": 0.004,
    "graph_dropped_connection": 0.008,
    "graph_401_once": 0.008,
    "token_expired": 0.004,
    "crash_before_graph": 0.008,
    "crash_after_graph": 0.008,
    "crash_after_schedule": 0.012,
    "crash_while_deadlettering": 0.02,
    "retry_send_fails": 0.01,
    "settlement_stalls": 0.008,
    # a time-bound add made, its removal at expiry not scheduled (retried): only a time-bound add's delivery meets it
    "expiry_send_fails": 0.03,
}
#: The faults that leave an add's write in doubt (sent, no answer: it may have been made): a pre-existing member's
#: first add in doubt makes the membership the app's (`Overlap.doubted`).
IN_DOUBT = frozenset(
    {
        "graph_503",
        "graph_504",
        "graph_read_timeout",
        "graph_dropped_connection",
        "crash_after_schedule",
        "retry_send_fails",
    }
)
_invocation: contextvars.ContextVar[Invocation | None] = contextvars.ContextVar("soak_invocation", default=None)


class Crash(Exception):
    """The invocation dies here (the host goes away); the lock expires and the message comes back."""


@dataclass(slots=True)
class Planned:
    message_id: str
    request_id: str
    kind: str
    container: str  # administrative unit id or role id
    member: str
    body: bytes
    path: str  # a regex matching the target in this message's Graph write paths
    properties: dict[str, str | int] = field(default_factory=dict)  # application properties the producer sets
    delay: float = 0.0  # seconds after the start when the producer sends it
    producer: str = ""  # whose own queue it is sent to (`grants_local.producers`); "" for the one its body names
    action: str = "add"  # the Graph write it may make: an add (POST) or a removal (DELETE)


@dataclass(slots=True)
class Invocation:
    fault: str | None
    scheduled: bool = False
    ended: threading.Event = field(default_factory=threading.Event)  # set once the function has returned or raised
    held: list[Fault] = field(default_factory=list)  # Graph requests held until it has ended


@dataclass(slots=True)
class Soak:
    """The plan and what happened."""

    seed: int
    messages: list[Planned]
    expected: dict[str, set[str]]  # container -> expected final members (the doomed unit excluded)
    doomed: str
    faults: Counter[str] = field(default_factory=Counter)
    max_delivery_count: int = 0
    deleted_at_log_index: int | None = None
    duplicates_same_id: int = 0
    duplicates_new_id: int = 0
    replays: dict[str, str] = field(default_factory=dict)  # MessageId of a replayed sealed copy -> its requestId
    expiry_victims: set[str] = field(default_factory=set)  # request ids a forged expiryOf names
    #: A request's own allowed terminal outcomes, where the plan knows them more exactly than its kind (`ALLOWED`).
    allowed: dict[str, frozenset[str]] = field(default_factory=dict)
    #: (container, member) -> the most Graph writes answered 204 it may see: adds, removals.
    writes: dict[tuple[str, str], tuple[int, int]] = field(default_factory=dict)
    #: The expiry of each time-bound add that stands alone (``~expire:<request id>``) -> that add's request id.
    expiries: dict[str, str] = field(default_factory=dict)
    overlaps: list[Overlap] = field(default_factory=list)
    #: Requests (and expiries, by ``~expire:<id>``) whose pair no other request changes at the same time -> their
    #: (container, member): a ``released`` with no holder must find no membership the app made there.
    sequenced: dict[str, tuple[str, str]] = field(default_factory=dict)
    #: Injected faults that leave a write in doubt, with the request whose delivery armed them (`Overlap.doubted`).
    doubts: list[tuple[str, Fault]] = field(default_factory=list)
    #: ``released`` outcomes with no holder that were logged while the app's membership was there (`ReleaseWatch`).
    released_over_app_member: list[str] = field(default_factory=list)
    #: The producer whose words a replayed copy is: the grants queue's, where the app sends its copies here.
    replayed_as: str = "bulk"
    #: When the ``overlapping`` pairs' first slot begins (`OVERLAP_LEAD_PER_MESSAGE`).
    overlap_start: datetime = EPOCH
    #: Removals the expiry sweep sent once the queues were empty (`drive`).
    swept: int = 0
    early_replays: dict[str, datetime] = field(default_factory=dict)  # MessageId of an early replay -> its time
    #: Each delivery of a sealed message before the time it was sealed for: (MessageId, start, that time).
    early_deliveries: list[tuple[str, str, datetime]] = field(default_factory=list)
    #: Byte-for-byte copies to send once duplicate detection's window has passed: (when, MessageId, what to send).
    later: list[tuple[float, str, dict[str, Any]]] = field(default_factory=list)
    #: The ``late_landing`` pairs, and what their steps' first deliveries meet, by MessageId (`LateStep`).
    late: list[LateScenario] = field(default_factory=list)
    scripted: dict[str, Scripted] = field(default_factory=dict)
    #: Steps of those pairs whose status the ledger holds is not true of the directory (`ledger_facts`).
    late_untrue: list[str] = field(default_factory=list)

    @property
    def scripted_requests(self) -> set[str]:
        """The request ids of the ``late_landing`` pairs' steps."""
        return {step.request_id for scenario in self.late for step in scenario.steps}

    def slot_time(self, slot: int) -> datetime:
        """When an ``overlapping`` pair's slot begins (its steps are sent then; an expiry in it falls then)."""
        return self.overlap_start + slot * OVERLAP_SLOT


@dataclass(slots=True)
class Overlap:
    """An ``overlapping`` pair: its steps (`grants_local.soak_model.Step`) and what they end as, without a doubt and
    (a pre-existing member) with the first add in doubt (`ending`'s ``doubted``)."""

    container: str
    member: str
    seeded: bool
    steps: list[Step]
    plain: Ending
    doubted: Ending | None

    @property
    def first_adds(self) -> frozenset[str]:
        """The adds of the pair's first slot: a doubt left by one of them is the one that decides pre-existence."""
        first = min(step.slot for step in self.steps)
        return frozenset(step.request_id for step in self.steps if step.op == "add" and step.slot == first)


@dataclass(frozen=True, slots=True)
class LateStep:
    """A step of a ``late_landing`` pair: an ``add`` or a ``remove`` sent `at` seconds after the pair's start; its
    first delivery's Graph write `held` (unanswered: its client gives up; it lands at a seeded moment after the pair's
    last step, within its window), and/or the ledger request returning its lease answered 503 (`release_fails`)."""

    op: str
    at: float
    held: bool = False
    release_fails: bool = False


#: The ``late_landing`` interleavings, one producer's steps of one pair, each newer than the one before. The steps are
#: far enough apart that each has ended before the next begins (its retry within 10 s of a timeout; after a failed
#: return of the lease, the lease's end, 120 s on), so each interleaving happens as written.
LATE_SCRIPTS: dict[str, tuple[LateStep, ...]] = {
    # an add in flight lands after a newer remove (its own retry was answered)
    "add_lands_after_remove": (LateStep("add", 0, held=True), LateStep("remove", 30)),
    # the mirror: a remove in flight lands after a newer add
    "remove_lands_after_add": (LateStep("add", 0), LateStep("remove", 30, held=True), LateStep("add", 60)),
    # an add and a newer remove both in flight; a newer remove answers not_member; both land after it
    "add_and_remove_in_flight": (
        LateStep("add", 0, held=True),
        LateStep("remove", 30, held=True),
        LateStep("remove", 60),
    ),
    # the mirror: a remove and a newer add in flight; a newer add answers already_member; both land after it
    "remove_and_add_in_flight": (
        LateStep("add", 0),
        LateStep("remove", 30, held=True),
        LateStep("add", 60, held=True),
        LateStep("add", 90),
    ),
    # the lease's return fails after an answered add, or after one in flight (which lands after the newer remove)
    "release_fails_after_add": (LateStep("add", 0, release_fails=True), LateStep("remove", 150)),
    "release_fails_add_in_flight": (LateStep("add", 0, held=True, release_fails=True), LateStep("remove", 150)),
    # the mirrors: after an answered remove, or after one in flight (which lands after the newer add)
    "release_fails_after_remove": (
        LateStep("add", 0),
        LateStep("remove", 30, release_fails=True),
        LateStep("add", 180),
    ),
    "release_fails_remove_in_flight": (
        LateStep("add", 0),
        LateStep("remove", 30, held=True, release_fails=True),
        LateStep("add", 180),
    ),
}
#: A held write lands at least this long after its pair's last step (which has ended by then), and at most
#: `LATE_LANDS_WITHIN` after its step was delivered: inside the app's window (`UNCERTAIN_WINDOW`, 300 s after the
#: write was sent at the earliest), with room for the governor's pauses that move the virtual clock meanwhile.
LATE_AFTER_LAST_STEP = 20.0
LATE_LANDS_WITHIN = 240.0
#: ``late_landing`` pairs start together in batches (a held write costs its invocation the client's read timeout in
#: wall time: a batch's run in parallel), batches `LATE_BATCH_GAP` apart, from an hour into an ``overlapping`` slot
#: (`OVERLAP_SLOT`), `LATE_BATCHES_PER_SLOT` in a slot: each pair's steps, landings and confirming copies (at most
#: 450 s: a failed return of the lease keeps its doubt 120 s + 300 s) end long before the slot's next steps.
LATE_BATCH = 16
LATE_BATCH_GAP = timedelta(minutes=15)
LATE_BATCHES_PER_SLOT = 8


@dataclass(slots=True)
class Landing:
    """When a ``late_landing`` step's held write is let go (`at`, virtual epoch seconds), and what became of it."""

    request_id: str
    action: str
    at: float
    fault: Fault | None = None  # the hold its step's first delivery armed
    armed_at: float | None = None  # when that delivery began (its write was sent then or later)
    done: bool = False  # its moment has come (a hold not armed by then is never armed)
    landed_at: float | None = None  # when the double carried it out, after its release
    status: int | None = None  # what the double answered it (204: it changed the directory)


@dataclass(slots=True)
class LateScenario:
    """A ``late_landing`` pair: its script (`LATE_SCRIPTS`), its steps as sent (oldest first) and its landings."""

    script: str
    container: str
    member: str
    producer: str
    steps: list[Planned]
    landings: list[Landing]

    @property
    def pair(self) -> str:
        """The pair as the ledger keys it (`shared.core.intents.pair_of`)."""
        return pair_of(AdministrativeUnit(id=Guid(self.container)), self.member)


@dataclass(frozen=True, slots=True)
class Scripted:
    """What a ``late_landing`` step's first delivery meets: its step, its pair, its landing if its write is held."""

    step: LateStep
    pair: str
    landing: Landing | None


def guid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def plan(graph: GraphDouble, *, count: int, seed: int, kinds: Mapping[str, int] = KINDS) -> Soak:
    """Seed the directory and build `count` messages (plus duplicates), all from `seed`, of `kinds` (message kind ->
    weight)."""
    rng = random.Random(seed)
    units = [guid(rng) for _ in range(20)]
    doomed = guid(rng)
    for unit in [*units, doomed]:
        graph.add_administrative_unit(unit)
    for template, role in ROLES:
        graph.add_role_template(template, activated=True, role_id=role)
    expected: dict[str, set[str]] = {container: set() for container in [*units, *(role for _, role in ROLES)]}
    soak = Soak(seed=seed, messages=[], expected=expected, doomed=doomed)
    soak.overlap_start = EPOCH + count * OVERLAP_LEAD_PER_MESSAGE
    messages = soak.messages
    names, weights = list(kinds), list(kinds.values())
    start = EPOCH - timedelta(hours=2)  # races are decided by requestedAt: made before they arrive
    for n in range(count):
        kind = rng.choices(names, weights)[0]
        if kind == "race":
            messages += _race(graph, rng, n, rng.choice(units), soak, start)
            continue
        if kind == "future":
            messages += _future(graph, rng, n, rng.choice(units), soak)
            continue
        if kind == "edge":
            messages.append(_edge(graph, rng, n, rng.choice(units), soak))
            continue
        if kind == "forged":
            adds = [m.request_id for m in messages if m.kind == "add"]
            messages += _forged(graph, rng, n, rng.choice(units), soak, adds, start)
            continue
        if kind == "forged_source":
            messages.append(_forged_source(graph, rng, n, rng.choice(units)))
            soak.writes[(messages[-1].container, messages[-1].member)] = WRITES["forged_source"]
            continue
        if kind == "colliding":
            messages += _colliding(graph, rng, n, rng.choice(units), soak)
            continue
        if kind == "squat":
            messages.append(_squat(rng, n, rng.choice(units), messages))
            continue
        if kind == "overlapping":
            messages += _overlapping(graph, rng, n, rng.choice(units), soak)
            continue
        if kind == "late_landing":
            messages += _late_landing(graph, rng, n, rng.choice(units), soak)
            continue
        to_role = kind != "doomed" and rng.random() < 0.3
        member = guid(rng)
        if to_role:
            template, role = rng.choice(ROLES)
            container = role
            member_type = rng.choice(["user", "servicePrincipal", "group"])
            target: dict[str, str] = (
                {"type": "directoryRole", "id": role}
                if rng.random() < 0.5
                else {"type": "directoryRole", "roleTemplateId": template}
            )
        else:
            container = doomed if kind == "doomed" else rng.choice(units)
            member_type = rng.choice(["user", "group", "device"])
            target = {"type": "administrativeUnit", "id": container}
        if kind != "add_missing":
            # replication delay is time, not a number of lookups: a retry that waited behind a backlog longer
            # than GRANTS_MEMBER_NOT_FOUND_WINDOW_SECONDS finds a really replicated member, but not one that
            # still needs lookups (the double's other model), and would be dead-lettered for the wrong reason
            late = {"visible_after_seconds": rng.uniform(1, 30)} if kind == "add_late" else {}
            _add_principal(graph, member, member_type, **late)
        seeded = kind in ("add_existing", "remove", "revoke_all_refused") or (
            kind == "revoke_all" and rng.random() < 0.7
        )
        if seeded:
            _seed_member(graph, container, member)
        if container in expected and kind in ("add", "add_existing", "add_late", "remove", "revoke_all_refused"):
            expected[container].add(member)  # a timebound grant is removed again: not expected at the end
        removes = kind.startswith(("remove", "revoke_all"))
        system = {"revoke_all": "hr", "revoke_all_refused": rng.choice(["ticketing", "bulk", "other"])}.get(kind)
        body: dict[str, Any] = {
            "schemaVersion": 1,
            "requestId": f"soak-{n}",
            "action": "remove" if removes else "add",
            "target": target,
            "member": {"id": member, "type": member_type},
            "source": {"system": system or rng.choice(["hr", "ticketing", "bulk"]), "reference": f"SOAK-{n}"},
            "requestedBy": "soak@contoso.com",
        }
        if kind.startswith("revoke_all"):
            body["revokeAll"] = True
        if kind == "timebound":  # expires within the run (virtual time): its removal must happen
            body["expiresAt"] = (EPOCH + timedelta(seconds=rng.uniform(60, 600))).isoformat().replace("+00:00", "Z")
            soak.expiries[f"~expire:soak-{n}"] = f"soak-{n}"
        if kind == "revoke_all" and not seeded:
            soak.allowed[f"soak-{n}"] = frozenset({"not_member"})
        if kind == "remove_absent":  # no other request for the pair: no membership the app made is there
            soak.sequenced[f"soak-{n}"] = (container, member)
        soak.writes[(container, member)] = WRITES[kind]
        path = f"(?:{container}|{target.get('roleTemplateId', container)})"
        encoded = _hostile(body, rng) if kind == "hostile" else json.dumps(body).encode()
        action = "remove" if removes else "add"
        messages.append(Planned(f"m-{n}", f"soak-{n}", kind, container, member, encoded, path, action=action))
    return soak


#: The most Graph writes answered 204 a pair of each kind may see (adds, removals): a membership the app did not make
#: is never removed but by a revokeAll, one it did not need is never written.
WRITES = {
    "add": (1, 0),
    "add_existing": (0, 0),
    "add_late": (1, 0),
    "add_missing": (0, 0),
    "remove": (0, 0),
    "revoke_all": (0, 1),
    "revoke_all_refused": (0, 0),
    "remove_absent": (0, 0),
    "doomed": (1, 0),
    "race": (1, 1),
    "timebound": (1, 1),
    "hostile": (0, 0),
    "future": (1, 1),
    "edge_add": (1, 0),
    "edge_revoke_all": (0, 1),
    "edge_timebound": (1, 1),
    "forged": (1, 0),
    "forged_source": (0, 0),
    "colliding": (1, 0),
}


def _source(raw: bytes) -> str:
    """The producer an honest sender of `raw` is: the one named as its ``source.system`` (``bulk``, on the grants
    queue, when the body names none readable)."""
    try:
        system = json.loads(raw)["source"]["system"]
    except (ValueError, KeyError, TypeError, RecursionError):
        return "bulk"
    return system if system in ("hr", "ticketing", "bulk", "other") else "bulk"


def _unit_body(request_id: str, action: str, unit: str, member: str, **fields: Any) -> bytes:
    document = {
        "schemaVersion": 1,
        "requestId": request_id,
        "action": action,
        "target": {"type": "administrativeUnit", "id": unit},
        "member": {"id": member, "type": "user"},
        "source": {"system": "ticketing", "reference": request_id[:256]},
        **fields,
    }
    return json.dumps(document).encode()


#: Producers of one source system (grants_local.producers): two of them may use one request id, each its own.
_SAME_SYSTEM = (("ticketing", "itsm", "ticketing"), ("bulk", "ops", "bulk"))


def _forged_source(graph: GraphDouble, rng: random.Random, n: int, unit: str) -> Planned:
    """An add from one producer's queue whose body names another producer's source system: refused, never granted
    (the member is not expected in the unit)."""
    member = guid(rng)
    graph.add_user(member)
    sender = rng.choice(["bulk", "other", "ops", "hr"])
    claimed = rng.choice([system for system in ("hr", "ticketing", "bulk", "other") if system != _SYSTEM_OF[sender]])
    body = json.loads(_unit_body(f"soak-{n}", "add", unit, member))
    body["source"] = {"system": claimed, "reference": f"soak-{n}"}
    raw = json.dumps(body).encode()
    return Planned(f"m-{n}", f"soak-{n}", "forged_source", unit, member, raw, f"(?:{unit})", producer=sender)


_SYSTEM_OF = {
    "ticketing": "ticketing",
    "itsm": "ticketing",
    "hr": "hr",
    "bulk": "bulk",
    "ops": "bulk",
    "other": "other",
}


def _colliding(graph: GraphDouble, rng: random.Random, n: int, unit: str, soak: Soak) -> list[Planned]:
    """Two producers of one source system send one request id, each asking for another member: two requests, both
    granted (neither a conflict nor a duplicate of the other)."""
    first, second, system = rng.choice(_SAME_SYSTEM)
    planned = []
    for producer in (first, second):
        member = guid(rng)
        graph.add_user(member)
        soak.expected[unit].add(member)
        soak.writes[(unit, member)] = WRITES["colliding"]
        body = json.loads(_unit_body(f"soak-{n}-shared", "add", unit, member))
        body["source"] = {"system": system, "reference": f"soak-{n}"}
        raw = json.dumps(body).encode()
        planned.append(
            Planned(
                f"m-{n}-{producer}",
                f"{producer}:soak-{n}-shared",
                "colliding",
                unit,
                member,
                raw,
                f"(?:{unit})",
                producer=producer,
            )
        )
    return planned


def _future(graph: GraphDouble, rng: random.Random, n: int, unit: str, soak: Soak) -> list[Planned]:
    """An add dated in the future (a producer's clock ahead, or a forged date at the domain's end), and a remove
    for the same member and unit that arrives after the add: the add counts as made when it arrived. The remove is
    the add's producer's (it ends that grant); where the member was there before the app, HR's revokeAll (a plain
    remove would leave a membership the app did not make)."""
    member = guid(rng)
    graph.add_user(member)
    seeded = rng.random() < 0.5
    if seeded:
        _seed_member(graph, unit, member)
    ahead = rng.choice(
        [
            _z(EPOCH + timedelta(hours=1)),
            _z(EPOCH + timedelta(seconds=rng.uniform(3600, 30 * 86400))),
            "2099-12-31T23:59:59.999999Z",
        ]
    )
    add = _unit_body(f"soak-{n}-add", "add", unit, member, requestedAt=ahead)
    if seeded:  # the revokeAll is newer than the add (made when it arrived): it ends the add's grant and the member
        remove = _unit_body(f"soak-{n}-remove", "remove", unit, member, revokeAll=True, source=_source_of("hr", n))
        soak.allowed[f"soak-{n}-add"] = frozenset({"already_member", "superseded"})
    else:
        remove = _unit_body(f"soak-{n}-remove", "remove", unit, member)
    soak.writes[(unit, member)] = WRITES["future"]
    path = f"(?:{unit})"
    kind = "future_revoke_all" if seeded else "future_remove"
    delay = rng.uniform(1, 900)
    return [
        Planned(f"m-{n}-add", f"soak-{n}-add", "future_add", unit, member, add, path),
        Planned(f"m-{n}-remove", f"soak-{n}-remove", kind, unit, member, remove, path, delay=delay, action="remove"),
    ]


def _source_of(producer: str, n: int) -> dict[str, str]:
    """The ``source`` of a body `producer` sends (its system's)."""
    return {"system": _SYSTEM_OF[producer], "reference": f"SOAK-{n}"}


def _edge(graph: GraphDouble, rng: random.Random, n: int, unit: str, soak: Soak) -> Planned:
    """An add, or HR's revokeAll of a member there before the app, dated at the domain's edges (inside it), or an
    add expiring at its far end."""
    member = guid(rng)
    graph.add_user(member)
    variant = rng.choice(["add", "revoke_all", "timebound"])
    fields: dict[str, Any] = {"requestedAt": rng.choice(EDGE_REQUESTED)}
    if variant == "revoke_all":
        _seed_member(graph, unit, member)
        fields.update(revokeAll=True, source=_source_of("hr", n))
    elif variant == "add":
        soak.expected[unit].add(member)
    else:  # its removal runs at the domain's end: the run's virtual clock jumps there
        fields["expiresAt"] = rng.choice(EDGE_EXPIRES)
        soak.expiries[f"~expire:soak-{n}"] = f"soak-{n}"
    soak.writes[(unit, member)] = WRITES[f"edge_{variant}"]
    action = "remove" if variant == "revoke_all" else "add"
    raw = _unit_body(f"soak-{n}", action, unit, member, **fields)
    return Planned(f"m-{n}", f"soak-{n}", f"edge_{variant}", unit, member, raw, f"(?:{unit})", action=action)


def _forged(
    graph: GraphDouble, rng: random.Random, n: int, unit: str, soak: Soak, adds: list[str], start: datetime
) -> list[Planned]:
    """An add carrying internal properties a producer may not set; half of them with a remove (its producer's own)
    made an hour before the add arrived (believing the forged arrivedAt would make the add the older intent)."""
    member = guid(rng)
    graph.add_user(member)
    soak.expected[unit].add(member)
    soak.writes[(unit, member)] = WRITES["forged"]
    victims = soak.expiry_victims
    forged: dict[str, str | int] = {
        "attempt": FORGED_ATTEMPT,
        "firstAttemptAt": FORGED_TIME,
        "arrivedAt": FORGED_TIME,
        "originalMessageId": f"m-{rng.randrange(max(n, 1))}",
        "hrEvent": FORGED_HR_EVENT,
        "bulkJob": FORGED_JOB,
        "jobRow": n + 1,
        "jobRows": 1_000_000,
        "seal": "v1." + "".join(rng.choices("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", k=43)),
    }
    if adds:
        forged["expiryOf"] = victim = rng.choice(adds)
        victims.add(victim)
    job = {"bulkJob", "jobRow", "jobRows"}  # a job's row names all three: the producer's own job (a forged row)
    keep_job = rng.random() < 0.6
    properties = {name: value for name, value in forged.items() if (keep_job if name in job else rng.random() < 0.6)}
    raced = rng.random() < 0.5
    if raced:
        properties["arrivedAt"] = FORGED_TIME
    add = _unit_body(f"soak-{n}", "add", unit, member)
    path = f"(?:{unit})"
    planned = [Planned(f"m-{n}", f"soak-{n}", "forged", unit, member, add, path, properties=properties)]
    if raced:
        made = _z(start + timedelta(seconds=rng.uniform(0, 3600)))  # before the add arrived
        remove = _unit_body(f"soak-{n}-remove", "remove", unit, member, requestedAt=made)
        planned.append(
            Planned(f"m-{n}-remove", f"soak-{n}-remove", "forged_remove", unit, member, remove, path, action="remove")
        )
    return planned


def _squat(rng: random.Random, n: int, unit: str, messages: list[Planned]) -> Planned:
    """A message taking an id the app derives: its request id one of the app's (``~…``), its MessageId the one the
    app would derive for an earlier message's retry copy or a time-bound grant's expiry removal (else its own)."""
    earlier = [m for m in messages if m.kind not in ("hostile", "squat")]
    message_id = f"m-{n}"
    if earlier:
        victim = rng.choice(earlier)
        timebound = [m for m in earlier if m.kind == "timebound"]
        if timebound and rng.random() < 0.3:
            message_id = _expiry_message_id(rng.choice(timebound))
        else:
            body_hash = hashlib.sha256(victim.body).hexdigest()
            message_id = derived_message_id("retry", victim.message_id, body_hash, "", suffix=str(rng.randint(2, 4)))
    if message_id in {m.message_id for m in messages}:  # squatted already: a second would be a dropped duplicate
        message_id = f"m-{n}"
    request_id = rng.choice([f"~expire:soak-{n}", f"~hr:evt-{n}:0123456789abcdef", f"~drift-add:soak-{n}"])
    raw = _unit_body(request_id, "add", unit, guid(rng))
    return Planned(message_id, f"soak-{n}-squat", "squat", unit, "", raw, f"(?:{unit})")


def _expiry_message_id(planned: Planned) -> str:
    """The MessageId (before the app keys it) of a time-bound grant's expiry removal."""
    command = parse_grant(planned.body)
    removal = expiry_removal(command.target, command.member.id, of=intent_of(command, arrived_at=EPOCH))
    return derived_message_id("expire", removal.request_id, content_hash(removal))


def _z(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def _race(graph: GraphDouble, rng: random.Random, n: int, unit: str, soak: Soak, start: datetime) -> list[Planned]:
    """An add and a remove for one member of `unit`, made at two distinct times: the remove the add's producer's own
    (newest wins within its grant), or, for a member there before the app, HR's revokeAll (which ends the grants older
    than it, and the membership, unless the add is newer)."""
    member = guid(rng)
    graph.add_user(member)
    seeded = rng.random() < 0.5
    if seeded:
        _seed_member(graph, unit, member)
    times = rng.sample(range(3600), 2)
    add_newer = times[0] > times[1]
    if add_newer:
        soak.expected[unit].add(member)
    soak.writes[(unit, member)] = WRITES["race"]
    add_id, remove_id = f"soak-{n}-add", f"soak-{n}-remove"
    if seeded and add_newer:  # the revokeAll first removes the member, the add grants it again; else it holds
        soak.allowed[add_id] = frozenset({"already_member", "granted"})
        soak.allowed[remove_id] = frozenset({"revoked", "not_member", released([f"ticketing {add_id}"])})
    elif seeded:  # the add first finds the member there; after the revokeAll it is superseded
        soak.allowed[add_id] = frozenset({"already_member", "superseded"})
    elif add_newer:  # the remove first ends a grant that made nothing; after the add it is superseded
        soak.allowed[add_id] = frozenset({"granted", "already_member"})
        soak.allowed[remove_id] = frozenset({"superseded", released()})
    planned = []
    for action, seconds in zip(("add", "remove"), times, strict=True):
        body: dict[str, Any] = {
            "schemaVersion": 1,
            "requestId": f"soak-{n}-{action}",
            "action": action,
            "target": {"type": "administrativeUnit", "id": unit},
            "member": {"id": member, "type": "user"},
            "source": {"system": "ticketing", "reference": f"SOAK-{n}"},
            "requestedAt": (start + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z"),
        }
        kind = f"race_{action}"
        if seeded and action == "remove":
            body.update(revokeAll=True, source=_source_of("hr", n))
            kind = "race_revoke_all"
        message_id, request_id = f"m-{n}-{action}", f"soak-{n}-{action}"
        raw = json.dumps(body).encode()
        planned.append(Planned(message_id, request_id, kind, unit, member, raw, f"(?:{unit})", action=action))
    return planned


#: The producers an ``overlapping`` pair's grants come from (`grants_local.producers`: hr may revokeAll).
OVERLAP_PRODUCERS = ("hr", "ticketing", "bulk", "itsm", "ops")
#: How far apart an ``overlapping`` pair's slots are (virtual time): far more than any request's retries take, so each
#: slot's work has ended before the next slot's begins (checked: "every overlapping step ended within its slot").
OVERLAP_SLOT = timedelta(hours=4)
#: Virtual time per message of the run before the ``overlapping`` pairs' first slot (`Soak.overlap_start`): the
#: messages sent at the start are worked through first, paced by the write governor on the virtual clock and paused by
#: the 429s (10,000 messages took 3.8 virtual hours; a first slot at the start shared them and ended late).
OVERLAP_LEAD_PER_MESSAGE = timedelta(seconds=4)
#: What becomes of each producer's grant of an ``overlapping`` pair, after its add.
OVERLAP_FATES = {
    "holds": (),
    "remove": ("remove",),
    "expires": ("expiry",),
    "expires_then_remove": ("expiry", "remove"),
    "remove_then_expires": ("remove", "expiry"),
}


def overlap_steps(rng: random.Random, n: int) -> list[Step]:
    """Two or three producers' grants of one pair: each producer's add (some time-bound), then what becomes of its
    grant (`OVERLAP_FATES`; HR's remove a revokeAll half the time), the producers' steps interleaved at random, one
    slot each but for adds, which may share one."""
    producers = rng.sample(OVERLAP_PRODUCERS, rng.choice((2, 2, 3)))
    chains: list[list[tuple[str, str]]] = []
    for producer in producers:
        ends = list(OVERLAP_FATES[rng.choice(list(OVERLAP_FATES))])
        if producer == "hr" and rng.random() < 0.5:
            ends = ["revokeAll" if end == "remove" else end for end in ends]
        chains.append([(producer, "add"), *((producer, end) for end in ends)])
    placed: list[tuple[str, str, int]] = []
    slot = -1
    while any(chains):
        producer, op = rng.choice([chain for chain in chains if chain]).pop(0)
        shared = op == "add" and placed and placed[-1][1] == "add" and rng.random() < 0.3
        slot += 0 if shared else 1
        placed.append((producer, op, slot))
    expiry = {producer: at for producer, op, at in placed if op == "expiry"}
    steps = []
    for producer, op, at in placed:
        grant = f"soak-{n}-{producer}"
        if op == "add":
            steps.append(Step(at, producer, "add", grant, expires=expiry.get(producer)))
        elif op == "expiry":
            steps.append(Step(at, producer, "expiry", grant))
        else:
            steps.append(Step(at, producer, "revokeAll" if op == "revokeAll" else "remove", f"{grant}-{op}"))
    return steps


def _holder(soak: Soak, step: Step) -> str:
    """How a ``released`` outcome names the grant `step` (an add) made (`_held_by` reads a record so)."""
    until = f" until {soak.slot_time(step.expires).isoformat()}" if step.expires is not None else ""
    return f"{step.producer} {step.request_id}{until}"


def _overlapping(graph: GraphDouble, rng: random.Random, n: int, unit: str, soak: Soak) -> list[Planned]:
    """Two or three producers' grants of one user of `unit` (`overlap_steps`), the user there before the app a third
    of the time; each step sent by its producer at its slot's start, each add's expiry at its slot's."""
    member = guid(rng)
    graph.add_user(member)
    seeded = rng.random() < 0.35
    if seeded:
        _seed_member(graph, unit, member)
    steps = overlap_steps(rng, n)
    holder = functools.partial(_holder, soak)
    plain = ending(steps, seeded=seeded, holder=holder)
    doubted = ending(steps, seeded=seeded, doubted=True, holder=holder) if seeded else None
    soak.overlaps.append(Overlap(unit, member, seeded, steps, plain, doubted))
    planned = []
    for index, step in enumerate(steps):
        soak.sequenced[step.key] = (unit, member)
        if step.op == "expiry":
            continue
        fields: dict[str, Any] = {"source": _source_of(step.producer, n)}
        if step.expires is not None:
            fields["expiresAt"] = _z(soak.slot_time(step.expires))
        if step.op == "revokeAll":
            fields["revokeAll"] = True
        action = "add" if step.op == "add" else "remove"
        raw = _unit_body(step.request_id, action, unit, member, **fields)
        kind = {"add": "overlap_add", "remove": "overlap_remove", "revokeAll": "overlap_revoke_all"}[step.op]
        planned.append(
            Planned(
                f"m-{n}-{index}",
                step.request_id,
                kind,
                unit,
                member,
                raw,
                f"(?:{unit})",
                delay=(soak.slot_time(step.slot) - EPOCH).total_seconds(),
                producer=step.producer,
                action=action,
            )
        )
    return planned


def _late_landing(graph: GraphDouble, rng: random.Random, n: int, unit: str, soak: Soak) -> list[Planned]:
    """One producer's steps of one user of `unit` (a seeded script of `LATE_SCRIPTS`), each dated a second before it
    is sent (newest wins: each newer than the one before), starting with its batch (`LATE_BATCH`); each held write's
    landing moment, after the last step and within `LATE_LANDS_WITHIN` of its own. Final: member exactly when the
    newest step is an add; the Graph writes answered 204 at most one per step, one per held write, and one per
    confirming copy that ran (`check`)."""
    member = guid(rng)
    graph.add_user(member)
    script = rng.choice(sorted(LATE_SCRIPTS))
    producer = rng.choice(OVERLAP_PRODUCERS)
    batch = len(soak.late) // LATE_BATCH
    slot, position = divmod(batch, LATE_BATCHES_PER_SLOT)
    start = soak.slot_time(slot) + timedelta(hours=1) + position * LATE_BATCH_GAP
    steps = LATE_SCRIPTS[script]
    last = steps[-1].at
    scenario = LateScenario(script, unit, member, producer, [], [])
    adds = removes = 0
    for index, step in enumerate(steps):
        request_id = f"soak-{n}-{index}-{step.op}"
        sent = start + timedelta(seconds=step.at)
        made = _z(sent - timedelta(seconds=1))
        raw = _unit_body(request_id, step.op, unit, member, source=_source_of(producer, n), requestedAt=made)
        planned = Planned(
            f"m-{n}-{index}",
            request_id,
            f"late_{step.op}",
            unit,
            member,
            raw,
            f"(?:{unit})",
            delay=(sent - EPOCH).total_seconds(),
            producer=producer,
            action=step.op,
        )
        scenario.steps.append(planned)
        landing = None
        if step.held:
            lands = rng.uniform(last + LATE_AFTER_LAST_STEP, step.at + LATE_LANDS_WITHIN)
            landing = Landing(request_id, step.op, (start + timedelta(seconds=lands)).timestamp())
            scenario.landings.append(landing)
        soak.scripted[planned.message_id] = Scripted(step, scenario.pair, landing)
        soak.sequenced[request_id] = (unit, member)
        adds += (step.op == "add") * (1 + step.held)
        removes += (step.op == "remove") * (1 + step.held)
    newest = scenario.steps[-1]
    soak.allowed[newest.request_id] = frozenset(ALLOWED[newest.kind] - {"superseded"})
    if newest.action == "add":
        soak.expected[unit].add(member)
    soak.writes[(unit, member)] = (adds, removes)
    soak.late.append(scenario)
    return scenario.steps


def _hostile(body: dict[str, Any], rng: random.Random) -> bytes:
    """`body` made into one the contract refuses (the hostile-input catalogue's kinds)."""
    variant = rng.choice(["c1", "surrogate", "far_expiry", "duplicate_key", "utf16"])
    if variant == "c1":
        return json.dumps({**body, "reason": "ok\u009b2J"}).encode()
    if variant == "surrogate":
        return json.dumps({**body, "reason": "night \ud800 shift"}).encode()
    if variant == "far_expiry":
        return json.dumps({**body, "expiresAt": "9999-12-31T23:59:59-01:00"}).encode()
    if variant == "duplicate_key":
        return json.dumps(body)[:-1].encode() + b', "action": "remove"}'
    return json.dumps(body).encode("utf-16")


def _add_principal(graph: GraphDouble, member: str, member_type: str, **late: Any) -> None:
    if member_type == "user":
        graph.add_user(member, **late)
    elif member_type == "group":
        graph.add_group(member, is_assignable_to_role=True, **late)
    elif member_type == "servicePrincipal":
        graph.add_service_principal(member, **late)
    else:
        graph.add_device(member, **late)


def _seed_member(graph: GraphDouble, container: str, member: str) -> None:
    """Make `member` a member of `container` before the run (through the double's own API)."""
    for template, role in ROLES:
        if role == container:
            graph.add_role_template(template, activated=True, role_id=role, members=graph.members_of(role) | {member})
            return
    graph.add_administrative_unit(container, members=graph.members_of(container) | {member})


#: What Azure Table Storage answers a request it is too busy to take (nothing written): 503, error code ServerBusy.
SERVER_BUSY = Response(
    503,
    {"odata.error": {"code": "ServerBusy", "message": {"lang": "en-US", "value": "The server is busy."}}},
    headers={"x-ms-error-code": "ServerBusy"},
    content_type="application/json;odata=minimalmetadata;streaming=true;charset=utf-8",
)


class StorageFaults:
    """The ledger's storage failing at its HTTP boundary: a request hook on the app's one `httpx.AsyncClient` (its
    event hooks apply to the ledger's requests: `shared.adapters.identity.HttpxTransport`) sends the next request
    that returns an armed pair's lease (the PUT of the pair's entity with no lease in it) to a loopback endpoint
    answering `SERVER_BUSY` instead of Azurite, once per arming: nothing is written, and the app hears what Azure
    Storage says then. The ledger and the gate run unchanged."""

    def __init__(self) -> None:
        self._busy = LoopbackServer(self._answer)
        self._armed: set[str] = set()
        self.struck = 0

    def _answer(self, request: Request) -> Response:
        return SERVER_BUSY

    def arm(self, pair: str) -> None:
        """Fail the next request returning `pair`'s lease (`shared.core.intents.pair_of`)."""
        self._armed.add(pair)

    async def __call__(self, request: httpx.Request) -> None:
        if not self._armed or request.method != "PUT":
            return
        try:
            entity = json.loads(request.content)
        except ValueError:
            return
        pair = entity.get("pair") if isinstance(entity, dict) else None
        if pair not in self._armed or "leaseToken" in entity:
            return
        self._armed.discard(pair)
        self.struck += 1
        request.url = request.url.copy_with(scheme="http", host="127.0.0.1", port=self._busy.port)

    def close(self) -> None:
        self._busy.close()


class SoakSender:
    """The local sender, failing the sends of a delivery told to fail them, and noting the ones that succeed."""

    def __init__(self, sender: LocalSender, soak: Soak, clock: ManualClock) -> None:
        self._sender = sender
        self._soak = soak
        self._clock = clock

    async def schedule(self, **kwargs: Any) -> None:
        current = _invocation.get()
        if current is not None and current.fault == "retry_send_fails":
            self._soak.faults["retry_send_fails"] += 1
            raise SendFailedError("injected: the retry copy could not be sent")
        if current is not None and current.fault == "expiry_send_fails" and kwargs["message_id"].startswith("~expire:"):
            current.fault = None  # once per delivery: its retry copy is sent
            self._soak.faults["expiry_send_fails"] += 1
            raise SendFailedError("injected: the removal at the grant's expiry could not be scheduled")
        await self._sender.schedule(**kwargs)
        if current is not None:
            current.scheduled = True
        await self._maybe_replay(**kwargs)
        await self._maybe_replay_early(**kwargs)

    async def _maybe_replay_early(
        self,
        *,
        body: bytes,
        message_id: str,
        application_properties: Mapping[str, Any],
        scheduled_enqueue_time: datetime,
    ) -> None:
        """Someone who can read the queue delivers this sealed message again before its time (`EARLY_REPLAY_RATE`,
        or `FAR_REPLAY_RATE`, seeded by the MessageId): byte for byte under its own MessageId once duplicate
        detection's window has passed (`Soak.later`), when it is due later than that (one in two), else as ``dlq
        resubmit`` sends a sealed message, at once. Not the copies an early replay set off."""
        soak = self._soak
        until = read_time(application_properties.get(NOT_BEFORE)) if SEAL in application_properties else None
        if until is None:
            return
        now = self._clock()
        rng = random.Random(f"{soak.seed}|early|{message_id}")
        if until.timestamp() <= now or RESUBMISSION in application_properties:
            return  # due now; or set off by an early replay (a resubmission's copies: each would set off more)
        if message_id.startswith(f"{DERIVED_PREFIX}wait:"):
            return  # a copy the app queued again for its time, after an early replay
        window = DEFAULT_DUPLICATE_DETECTION_WINDOW
        far = until.timestamp() - now > window + 60
        if rng.random() >= (FAR_REPLAY_RATE if far else EARLY_REPLAY_RATE):
            return
        if far and rng.random() < 0.5:
            at = now + window + rng.uniform(1, min(until.timestamp() - now - window - 1, 3600))
            copy = {"body": body, "application_properties": dict(application_properties)}
            soak.later.append((at, message_id, copy))
            return
        resubmission = f"{rng.getrandbits(32):08x}"
        properties = {**application_properties, RESUBMITTED_FROM: message_id, RESUBMISSION: resubmission}
        body_hash = hashlib.sha256(body).hexdigest()
        copy_id = derived_message_id("resubmit", message_id, body_hash, suffix=resubmission)
        soak.early_replays[copy_id] = until
        soak.faults["early_replay_resubmitted"] += 1
        await self._sender.schedule(
            body=body,
            message_id=copy_id,
            application_properties=properties,
            scheduled_enqueue_time=datetime.fromtimestamp(now, UTC),
        )

    async def _maybe_replay(
        self, *, body: bytes, message_id: str, application_properties: Mapping[str, Any], **kwargs: Any
    ) -> None:
        """A producer who saw this sealed message sends it again, seal and properties included, under another
        MessageId (one in ten, seeded by the MessageId). It lands on the grants queue, whose producer it then is
        (`Soak.replayed_as`): not a copy of another producer's request that producer could make its own (the same
        source system, a producer's request id), which would be a grant the plan does not know of."""
        if SEAL not in application_properties or random.Random(f"{self._soak.seed}|{message_id}").random() >= 0.1:
            return
        if RESUBMISSION in application_properties:  # an early replay's copies: a resubmission keeps its origin
            return
        replay_id = f"{message_id[:100]}-replay"
        try:
            document = json.loads(body)
            request_id, system = str(document["requestId"]), document["source"]["system"]
        except (ValueError, KeyError, TypeError):
            return
        owner = self._soak.replayed_as
        others = application_properties.get(PRODUCER) != owner and not request_id.startswith("~")
        if others and system == _SYSTEM_OF.get(owner):
            return
        self._soak.replays[replay_id] = request_id
        await self._sender.schedule(
            body=body, message_id=replay_id, application_properties=application_properties, **kwargs
        )


class SoakActions:
    """The real message actions for one delivery, dying where that delivery's fault says."""

    def __init__(self, actions: Any, current: Invocation, soak: Soak) -> None:
        self._actions, self._current, self._soak = actions, current, soak

    def complete(self, message: Any) -> None:
        fault = self._current.fault
        if fault == "settlement_stalls":  # on the settlement's thread: the host answers once the app gave up waiting
            self._current.fault = None
            self._soak.faults[fault] += 1
            self._current.ended.wait(STALL_GUARD_SECONDS)
        if fault == "crash_after_schedule" and self._current.scheduled:
            self._die(fault)
        if fault == "crash_after_graph" and not self._current.scheduled:
            self._die(fault)
        self._actions.complete(message)

    def abandon(self, message: Any) -> None:
        self._actions.abandon(message)

    def deadletter(self, message: Any, deadletter_reason: str, deadletter_error_description: str) -> None:
        if self._current.fault == "crash_while_deadlettering":
            self._die("crash_while_deadlettering")
        self._actions.deadletter(
            message, deadletter_reason=deadletter_reason, deadletter_error_description=deadletter_error_description
        )

    def _die(self, fault: str) -> None:
        self._current.fault = None  # once per delivery
        self._soak.faults[fault] += 1
        raise Crash(fault)


class SoakFunction:
    """Wraps the registered function object: chooses each delivery's fault and injects it."""

    def __init__(
        self,
        function: Any,
        *,
        soak: Soak,
        graph: GraphDouble,
        tokens: TokenEndpoint,
        by_request: dict[str, Planned],
        clock: ManualClock,
        storage: StorageFaults,
    ) -> None:
        self._function, self._soak, self._graph, self._tokens = function, soak, graph, tokens
        self._by_request = by_request
        self._clock = clock
        self._storage = storage
        self._first_deliveries: set[str] = set()
        self._running: set[int] = set()  # invocations in flight, by number
        self._saw_last_expiry: set[int] = set()  # of those, the ones in flight when tokens last expired
        self._started = 0

    async def __call__(self, *, receivedmessage: Any, message_actions: Any) -> None:
        soak = self._soak
        delivery_count = int(receivedmessage.delivery_count or 1)
        soak.max_delivery_count = max(soak.max_delivery_count, delivery_count)
        self._maybe_delete_doomed(str(receivedmessage.message_id))
        rng = random.Random(f"{soak.seed}|{receivedmessage.message_id}|{delivery_count}")
        fault = _choose(rng)
        planned = self._planned(receivedmessage)
        if planned is not None and planned.kind.startswith("late_"):
            fault = None  # its faults are its script's, on its steps' first deliveries (`_script`)
        current = Invocation(fault)
        self._started += 1
        number = self._started
        self._running.add(number)
        self._note_early(receivedmessage)
        token = _invocation.set(current)
        try:
            if fault is not None and planned is not None and planned.kind not in ("hostile", "squat"):  # never in Graph
                self._inject(fault, planned, rng, current)
            if planned is not None and delivery_count == 1:
                self._script(str(receivedmessage.message_id), planned)
            await self._function(
                receivedmessage=receivedmessage, message_actions=SoakActions(message_actions, current, soak)
            )
        finally:
            _invocation.reset(token)
            self._running.discard(number)
            self._saw_last_expiry.discard(number)
            current.ended.set()
            for held in current.held:  # its client gave up on it: the write lands late
                held.release()

    def _note_early(self, message: Any) -> None:
        """A delivery of a sealed message (seal and ``notBefore``) before the time it names: what it ends as is
        checked (`check`: it may only wait)."""
        properties = message.application_properties or {}
        until = read_time(property_of(properties, NOT_BEFORE)) if property_of(properties, SEAL) else None
        now = self._clock()
        if until is not None and now < until.timestamp():
            started = datetime.fromtimestamp(now, UTC).isoformat()
            self._soak.early_deliveries.append((str(message.message_id), started, until))

    def _planned(self, message: Any) -> Planned | None:
        try:
            request_id = json.loads(b"".join(bytes(part) for part in message.body))["requestId"]
        except (ValueError, KeyError, TypeError):
            return None
        return self._by_request.get(request_id)

    def _maybe_delete_doomed(self, message_id: str) -> None:
        soak = self._soak
        self._first_deliveries.add(message_id)
        if soak.deleted_at_log_index is None and len(self._first_deliveries) >= len(soak.messages) // 2:
            soak.deleted_at_log_index = len(self._graph.requests)
            self._graph.delete_administrative_unit(soak.doomed)

    def _script(self, message_id: str, planned: Planned) -> None:
        """Arm what a ``late_landing`` step's first delivery meets (`Scripted`): the ledger's return of its pair's
        lease failing once, and its Graph write held until its landing moment (`drive` lets it go then), unless that
        moment has come already (its delivery came that late: it is not held)."""
        scripted = self._soak.scripted.get(message_id)
        if scripted is None:
            return
        if scripted.step.release_fails:
            self._storage.arm(scripted.pair)
        landing = scripted.landing
        if landing is not None and not landing.done:
            landing.fault = Fault.hold(**_write_of(planned))
            landing.armed_at = self._clock()
            self._graph.inject(landing.fault)

    def _inject(self, fault: str, planned: Planned, rng: random.Random, current: Invocation) -> None:
        """Arm `fault` for this delivery's Graph write (matched by container and member)."""
        write = _write_of(planned)
        graph_faults = {
            "graph_429_retry_after": lambda: Fault.status(429, retry_after=rng.randint(1, 20), **write),
            "graph_429_no_retry_after": lambda: Fault.status(429, **write),
            "graph_503": lambda: Fault.status(503, **write),
            "graph_504": lambda: Fault.status(504, **write),
            "graph_read_timeout": lambda: Fault.hold(**write),
            "graph_dropped_connection": lambda: Fault.drop(**write),
            "graph_401_once": lambda: Fault.status(401, **write),
            # a retry copy is needed for these to mean anything: make this delivery fail transiently
            "crash_after_schedule": lambda: Fault.status(503, **write),
            "retry_send_fails": lambda: Fault.status(503, **write),
        }
        if fault in graph_faults:
            injected = graph_faults[fault]()
            self._graph.inject(injected)
            if injected.kind == "hold":
                current.held.append(injected)
            if fault in IN_DOUBT and planned.action == "add":
                self._soak.doubts.append((planned.request_id, injected))
            if fault.startswith("graph_"):
                self._soak.faults[fault] += 1
        elif fault == "token_expired":
            # two expiries within one invocation's life (a refused token, a fresh one, refused again) are
            # Unauthorized by design, and do not happen within an hour in Azure
            if self._saw_last_expiry:
                return
            self._saw_last_expiry = set(self._running)
            self._tokens.expire_all()
            self._soak.faults["token_expired"] += 1
            roll = rng.random()
            if roll < 0.3:
                self._tokens.fail_next(rng.randint(1, 2), status=503)
                self._soak.faults["token_endpoint_unavailable"] += 1
            self._tokens.delay_seconds = 0.2 if 0.3 <= roll < 0.6 else 0.0
            if self._tokens.delay_seconds:
                self._soak.faults["token_endpoint_slow"] += 1
        elif fault == "crash_before_graph":
            self._soak.faults[fault] += 1
            raise Crash(fault)


def _write_of(planned: Planned) -> dict[str, Any]:
    """What matches `planned`'s Graph write (a `Fault`'s method, path and body): by container and member."""
    if planned.action == "remove":
        return {"method": "DELETE", "path": f"{planned.path}.*{planned.member}"}
    return {"method": "POST", "path": planned.path, "body": planned.member}


def _choose(rng: random.Random) -> str | None:
    roll = rng.random()
    for fault, probability in FAULTS.items():
        if roll < probability:
            return fault
        roll -= probability
    return None


# --- running ---------------------------------------------------------------------------------------


class ReleaseWatch:
    """Looks at each grant outcome line as it is logged: a ``released`` with no holder ("the app made no membership
    of this member and target that is still there to remove"), of a pair no other request changes meanwhile
    (`Soak.sequenced`), while the member is in the target, is noted (`Soak.released_over_app_member`): the member is
    there because of the app (or was found there and kept), and the app said it had nothing there."""

    def __init__(self, soak: Soak, graph: GraphDouble) -> None:
        self._soak = soak
        self._graph = graph

    def __call__(self, record: logging.LogRecord) -> None:
        line = getattr(record, "grant", None)
        if not isinstance(line, Mapping) or line.get("outcome") != "released" or line.get("heldBy"):
            return
        request_id = str(line.get("requestId"))
        pair = self._soak.sequenced.get(request_id)
        if pair is None or str(line.get("originalMessageId")) in self._soak.replays:
            return
        container, member = pair
        if member in self._graph.members_of(container):
            self._soak.released_over_app_member.append(request_id)


class LogScan(logging.Handler):
    """Formats every record (tracebacks included) and counts lines holding a token or the identity secret."""

    def __init__(self, tokens: TokenEndpoint, watch: ReleaseWatch | None = None) -> None:
        super().__init__(logging.DEBUG)
        self._tokens = tokens
        self._watch = watch
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
        self.lines = 0
        self.leaks: list[str] = []
        self.escaped: list[str] = []  # invocations that raised something other than an injected crash

    def emit(self, record: logging.LogRecord) -> None:
        text = self.format(record)
        self.lines += 1
        if self._watch is not None:
            self._watch(record)
        if record.name == "grants_local.host" and record.exc_info and not isinstance(record.exc_info[1], Crash):
            self.escaped.append(text[-300:])
        secrets = [self._tokens.header_secret, *self._tokens.issued_tokens]
        if any(secret in text for secret in secrets) or "Bearer " in text:
            self.leaks.append(text[:300])


@dataclass(frozen=True, slots=True)
class QueueTotals:
    """Every queue's statistics added up (the grants queue and each producer's own)."""

    sent: int
    duplicates_dropped: int
    completed: int
    abandoned: int
    dead_lettered: int
    locks_expired: int

    @classmethod
    def of(cls, queues: list[LocalQueue]) -> QueueTotals:
        return cls(*(sum(getattr(q.stats, name) for q in queues) for name in cls.__slots__))


@dataclass(slots=True)
class Report:
    invariants: list[tuple[str, str, str, bool]]
    faults: Counter[str]
    outcomes: Counter[str]
    numbers: dict[str, Any]

    @property
    def passed(self) -> bool:
        return all(ok for *_, ok in self.invariants)


async def run_soak(
    *,
    count: int,
    seed: int,
    concurrency: int = 16,
    log_level: int = logging.DEBUG,
    kinds: Mapping[str, int] = KINDS,
) -> Report:
    """Run the soak of `kinds` (message kind -> weight: by default every kind, `KINDS`) and check the invariants;
    every log record at `log_level` or above is scanned."""
    started = time.monotonic()
    clock = ManualClock()
    async with AsyncExitStack() as stack:
        tokens = stack.enter_context(TokenEndpoint())
        graph = stack.enter_context(GraphDouble(tokens, clock=clock))
        soak = plan(graph, count=count, seed=seed, kinds=kinds)
        scan = LogScan(tokens, ReleaseWatch(soak, graph))
        root = logging.getLogger()
        previous_level = root.level
        root.addHandler(scan)
        root.setLevel(log_level)
        stack.callback(root.setLevel, previous_level)
        if log_level < logging.INFO:  # make soak scans the libraries' debug lines for tokens too
            for name in LIBRARY_LOGGERS:
                library = logging.getLogger(name)
                stack.callback(library.setLevel, library.level)
                library.setLevel(log_level)
        stack.callback(root.removeHandler, scan)
        stack.enter_context(os_environment(tokens.env()))
        for name in ("IDENTITY_SERVER_THUMBPRINT", "MSI_ENDPOINT", "MSI_SECRET", "AZURE_CLIENT_ID"):
            os.environ.pop(name, None)
        stack.enter_context(declared())  # each producer's queue has its trigger
        import function_app

        queue = LocalQueue(clock=clock)
        settings = Settings.from_env(
            {
                "GRAPH_BASE_URL": graph.base_url,
                "GRANTS_SETTLEMENT_TIMEOUT_SECONDS": str(SETTLEMENT_DEADLINE_SECONDS),
                "GRANTS_PRODUCERS": registry_json(),
            }
        )
        app = await stack.enter_async_context(
            local_app(settings, queue=queue, sender=lambda local: SoakSender(local, soak, clock))
        )
        owner = settings.producers.on_queue(settings.grants_queue)
        soak.replayed_as = owner.name if owner is not None else ""
        rng = random.Random(f"{seed}|producer")
        for planned in soak.messages:
            at = EPOCH + timedelta(seconds=planned.delay) if planned.delay else None
            own = app.queue_of(planned.producer or _source(planned.body))

            def send(
                message_id: str, planned: Planned = planned, at: datetime | None = at, own: LocalQueue = own
            ) -> None:
                own.send(
                    planned.body,
                    message_id=message_id,
                    application_properties=planned.properties,
                    content_type="application/json",
                    scheduled_enqueue_time=at,
                )

            send(planned.message_id)
            if planned.kind.startswith("late_"):  # its interleaving is scripted: each step sent once
                continue
            if rng.random() < 0.02:  # the producer sends it again: duplicate detection drops it
                send(planned.message_id)
                soak.duplicates_same_id += 1
            if rng.random() < 0.02:  # the producer sends the same request again under a new MessageId
                send(planned.message_id + "-again")
                soak.duplicates_new_id += 1
        http = app.services.http
        http.timeout = httpx.Timeout(READ_TIMEOUT_SECONDS, connect=5.0, pool=30.0)
        storage = StorageFaults()
        stack.callback(storage.close)
        http.event_hooks = {**http.event_hooks, "request": [*http.event_hooks["request"], storage]}
        by_request = {planned.request_id: planned for planned in soak.messages}

        def faulty(name: str) -> SoakFunction:
            function = registered_function(function_app.app, name)
            return SoakFunction(
                function, soak=soak, graph=graph, tokens=tokens, by_request=by_request, clock=clock, storage=storage
            )

        host = LocalHost(
            queue=queue,
            function=faulty("grant_membership"),
            actions=app.actions,
            clock=clock,
            concurrency=concurrency,
            sources=tuple(Source(q.queue, faulty(q.function), q.actions) for q in app.producer_queues.values()),
        )
        virtual_start = clock()
        queues = [queue, *(q.queue for q in app.producer_queues.values())]
        await drive(host, soak, queues, clock, app.services.expiry_sweep, graph)
        soak.faults["ledger_lease_return_busy"] += storage.struck
        recorder = app.recorder
        report = check(soak, graph, queues, recorder.records, scan, await ledger_facts(soak, app.services.ledger))
        report.numbers.update(
            seed=seed,
            messages=count,
            invocations=host.invocations,
            failed_invocations=host.failed_invocations,
            duplicates_same_id=soak.duplicates_same_id,
            duplicates_new_id=soak.duplicates_new_id,
            graph_requests=len(graph.requests),
            token_requests=tokens.request_count,
            log_lines=scan.lines,
            virtual_seconds=round(clock() - virtual_start, 1),
            wall_seconds=round(time.monotonic() - started, 1),
        )
        return report


async def drive(
    host: LocalHost,
    soak: Soak,
    queues: list[LocalQueue],
    clock: ManualClock,
    sweep: Callable[[], Awaitable[int]],
    graph: GraphDouble,
) -> None:
    """Deliver everything `host` reads (`queues`, the app's own first), one moment at a time (the next due
    message's, the next planned byte-for-byte copy's, `Soak.later`, or the next held write's landing, `Landing`),
    sending each copy at its moment, deliverable then, if that is still before the time its message was sealed for (a
    copy whose moment the run has passed is sent at once if still early, else never), and letting each held write
    land at its moment (`land`: nothing else runs then). Once nothing is left, the expiry sweep (the timer trigger
    `expiry_sweep`) runs as its next tick would, and what it sends is delivered, until it sends nothing new: a
    time-bound grant whose removal was never scheduled (its add's retry came after its expiry: ``Expired``) ends by
    it, as in Azure."""
    landings = sorted((landing for scenario in soak.late for landing in scenario.landings), key=lambda x: x.at)
    while True:
        soak.later.sort()
        moments = [due for queue in queues if (due := queue.next_due_time()) is not None]
        moments += [soak.later[0][0]] if soak.later else []
        moments += [landings[0].at] if landings else []
        if not moments:
            sent = await sweep()
            soak.swept += sent
            if not sent or all(queue.next_due_time() is None for queue in queues):  # none, or dropped as duplicates
                return
            continue
        await host.drain(until=min(moments))
        clock.advance_to(min(moments))
        while landings and landings[0].at <= clock():
            await land(landings.pop(0), graph, clock)
        while soak.later and soak.later[0][0] <= clock():
            _, message_id, copy = soak.later.pop(0)
            until = read_time(copy["application_properties"][NOT_BEFORE])
            if until is not None and clock() < until.timestamp():
                soak.early_replays[message_id] = until
                soak.faults["early_replay_byte_for_byte"] += 1
                grants = queues[0]  # the app's own queue, where the app sent the message
                grants.send(copy["body"], message_id=message_id, application_properties=copy["application_properties"])


async def land(landing: Landing, graph: GraphDouble, clock: ManualClock) -> None:
    """Let `landing`'s held write go on and wait until the double has carried it out (nothing else runs meanwhile:
    the request it logs is that write's); a hold not armed by now is never armed, one armed whose write was not sent
    (yet) lets it through unheld."""
    landing.done = True
    fault = landing.fault
    if fault is None:
        return
    held = graph.holds(fault)
    logged = len(graph.requests)
    fault.release()
    if not held:
        return
    await asyncio.to_thread(fault.wait_landed, STALL_GUARD_SECONDS)
    landing.landed_at = clock()
    answered = graph.requests[logged:]
    landing.status = answered[0].status if answered else None


def _true_of(record: StatusRecord, action: str) -> bool:
    """True when `record` (the newest request's status) says what its pair ends as: an add's, a member there; a
    remove's, none (removed, not there, or with no holder: nothing of the app's left there)."""
    if action == "add":
        return record.status in (Status.GRANTED, Status.ALREADY_MEMBER)
    return record.status in (Status.REVOKED, Status.NOT_MEMBER) or (
        record.status is Status.RELEASED and not record.held_by
    )


async def ledger_facts(soak: Soak, ledger: Ledger) -> dict[str, int]:
    """What the ledger holds that no producer may have written: rows of the HR event only forged properties named,
    rows of the job they named under any producer but the one that sent them (a producer's job properties on its own
    queue name its own job: so does a replayed copy of a forged message's retry copy, which is the words of the
    producer whose queue it lands on, `Soak.replayed_as`), and removals noted on requests that only a forged
    ``expiryOf`` named."""
    forged_rows = sum(len(group.rows) for group in await ledger.group("hrEvent", FORGED_HR_EVENT, producer=None))
    for group in await ledger.group("job", FORGED_JOB, producer=None):
        if group.producer == FORGED_BY:
            continue
        producer = group.producer if group.producer == soak.replayed_as else None
        for row in group.rows:
            record = await ledger.status(str(row["requestId"]), producer=producer) if producer else None
            forged_rows += record is None or record.message_id not in soak.replays
    noted = 0
    for request_id in sorted(soak.expiry_victims):
        noted += any(status.removal is not None for status in await ledger.statuses(request_id))
    # a late_landing pair's steps: each status terminal, the newest one's what the pair ends as (it is the last word)
    untrue = 0
    for scenario in soak.late:
        for sent in scenario.steps:
            record = await ledger.status(sent.request_id, producer=scenario.producer)
            newest = sent is scenario.steps[-1]
            wrong = record is None or not record.status.terminal or (newest and not _true_of(record, sent.action))
            if wrong:
                untrue += 1
                soak.late_untrue.append(sent.request_id)
    return {"forged_rows": forged_rows, "forged_removals": noted, "late_statuses_untrue": untrue}


#: What a replayed copy of another producer's request ends as: it is the words of whoever sends to its queue.
_NOT_ITS_PRODUCERS = frozenset({"SourceMismatch", "UnknownProducer"})


def check(
    soak: Soak,
    graph: GraphDouble,
    queues: list[LocalQueue],
    records: list[Mapping[str, Any]],
    scan: LogScan,
    facts: Mapping[str, int] | None = None,
) -> Report:
    """The invariants, from the outcome records, the queue, the Graph double's state and request log, and what the
    ledger holds (`ledger_facts`)."""
    facts = facts or {"forged_rows": 0, "forged_removals": 0, "late_statuses_untrue": 0}
    replays = [Planned(message_id, message_id, "replay", "", "", b"", "") for message_id in soak.replays]
    by_request = {planned.request_id: planned for planned in [*soak.messages, *replays]}
    # a body that is not JSON has no readable requestId: its record is found by the producer's MessageId
    request_of = {planned.message_id: planned.request_id for planned in [*soak.messages, *replays]}
    request_of.update({f"{planned.message_id}-again": planned.request_id for planned in soak.messages})
    expiry_steps = [step for overlap in soak.overlaps for step in overlap.steps if step.op == "expiry"]
    expiry_keys = set(soak.expiries) | {step.key for step in expiry_steps}
    terminal: dict[str, list[str]] = defaultdict(list)
    finished: dict[str, list[datetime]] = defaultdict(list)  # every outcome line's finishedAt, by request
    reasons_of: dict[str, set[str]] = defaultdict(set)  # every reason a request's outcome lines gave
    replays_seen: set[str] = set()
    descriptions: dict[tuple[str, str], str] = {}
    forged_ids = {planned.message_id for planned in soak.messages if planned.properties}
    forged_attempts = forged_first = 0
    for record in list(records):  # a late settlement may append from its thread
        if str(record.get("originalMessageId")) in forged_ids:
            forged_attempts += int(record.get("attempts") or 0) >= FORGED_ATTEMPT
            forged_first += str(record.get("firstAttemptAt") or "9999") < EPOCH.isoformat()
        request_id = record.get("requestId") or request_of.get(str(record.get("originalMessageId")))
        if f"{record.get('producer')}:{request_id}" in by_request:  # one id, two producers: each its own request
            request_id = f"{record.get('producer')}:{request_id}"
        replayed = str(record.get("originalMessageId")) in soak.replays
        if replayed and record.get("terminal"):
            replays_seen.add(str(record.get("originalMessageId")))
        if replayed and (str(request_id).startswith("~") or record.get("reason") in _NOT_ITS_PRODUCERS):
            # a replayed copy is a message of whoever may send to the queue it landed on, not of the request's
            # producer: a ~ id refused, or refused as another producer's words; else its request again
            request_id = str(record.get("originalMessageId"))
        if request_id not in by_request and (request_id not in expiry_keys or replayed):
            continue
        request_id = str(request_id)
        if isinstance(record.get("finishedAt"), str):
            finished[request_id].append(datetime.fromisoformat(record["finishedAt"]))
        reasons_of[request_id].add(str(record.get("reason")))
        if record.get("terminal"):
            outcome = _outcome(record)
            terminal[request_id].append(outcome)
            descriptions[(request_id, outcome)] = str(record.get("description", ""))[:400]
    early_ran, deferred = _early_deliveries(soak, records)
    dead = [entry for queue in queues for entry in queue.dead_letters()]
    for entry in dead:
        if entry.reason == MAX_DELIVERY_COUNT_EXCEEDED:
            request_id = json.loads(entry.body).get("requestId")
            terminal[str(request_id)].append(f"dead_lettered:{MAX_DELIVERY_COUNT_EXCEEDED}")
    outcomes: Counter[str] = Counter(_coarse(outcome) for values in terminal.values() for outcome in values)
    reached = sum(1 for planned in soak.messages if terminal.get(planned.request_id))
    replays_ended = len(replays_seen)
    more_than_one = sum(1 for values in terminal.values() if len(values) > 1)

    member_of = {planned.member: planned for planned in soak.messages}
    writes: Counter[tuple[str, str, str]] = Counter()
    doomed_after_deletion = 0
    for index, request in enumerate(graph.requests):
        if request.method not in ("POST", "DELETE"):
            continue
        member = _member_of(request)
        planned = member_of.get(member or "")
        if planned is None:
            continue
        if request.status == 204:
            writes[(request.method, planned.container, planned.member)] += 1
            deleted = soak.deleted_at_log_index
            if planned.container == soak.doomed and deleted is not None and index >= deleted:
                doomed_after_deletion += 1
    # the overlapping pairs: a pre-existing member's first add in doubt makes the membership the app's
    in_doubt = {request_id for request_id, fault in soak.doubts if fault.landed.is_set()}
    in_doubt |= {request_id for request_id, given in reasons_of.items() if given & _IN_DOUBT_REASONS}
    allowed = dict(soak.allowed)
    planned_writes = dict(soak.writes)
    exact_writes: set[tuple[str, str]] = set()
    expected = {container: set(members) for container, members in soak.expected.items()}
    doubted = made_by_app = late_steps = 0
    for overlap in soak.overlaps:
        pair = (overlap.container, overlap.member)
        candidates = [overlap.plain]
        if overlap.doubted is not None and overlap.first_adds & in_doubt:
            candidates.append(overlap.doubted)
            doubted += 1
        there = overlap.member in graph.members_of(overlap.container)
        seen = (writes[("POST", *pair)], writes[("DELETE", *pair)])
        chosen = min(candidates, key=lambda candidate: _misses(candidate, there, seen, terminal))
        made_by_app += chosen is not overlap.plain
        allowed.update(chosen.outcomes)
        planned_writes[pair] = (chosen.adds, chosen.removals)
        exact_writes.add(pair)
        if chosen.member:
            expected[overlap.container].add(overlap.member)
        slots = sorted({step.slot for step in overlap.steps})
        for step in overlap.steps:
            later = [slot for slot in slots if slot > step.slot]
            if later:
                late_steps += sum(1 for at in finished.get(step.key, []) if at >= soak.slot_time(later[0]))

    # a late_landing pair may see, besides one write per step and one per held write, one per confirming copy of its
    # steps that ran: the app's own second write of a step made while a write of the other action was in doubt
    confirming = _confirming_copies(records)
    for scenario in soak.late:
        adds, removals = planned_writes[(scenario.container, scenario.member)]
        for sent in scenario.steps:
            ran = confirming.ran.get(sent.request_id, 0)
            adds, removals = (adds + ran, removals) if sent.action == "add" else (adds, removals + ran)
        planned_writes[(scenario.container, scenario.member)] = (adds, removals)
    late = _late_landings(soak, records)

    def allows(request_id: str) -> set[str]:
        own = allowed.get(request_id)
        if own is not None:
            return {*own, "duplicate"}
        if request_id in expiry_keys:
            return ALLOWED["expiry"]
        planned = by_request.get(request_id)
        return ALLOWED[planned.kind] if planned is not None else set()

    not_allowed = [
        (request_id, outcome)
        for request_id, values in terminal.items()
        for outcome in values
        if outcome not in allows(request_id)
    ]
    released_unexpected = sum(1 for _, outcome in not_allowed if outcome.startswith("released"))
    # every time-bound grant that was made ends: an overlapping pair's each, a lone one's once its add held
    holds = {"granted", "already_member"}
    due = [step.key for step in expiry_steps]
    due += [key for key, add in soak.expiries.items() if holds & set(terminal.get(add, []))]
    expiries_ended = sum(1 for key in due if terminal.get(key))

    wrong_membership = 0
    for container, members in expected.items():
        wrong_membership += len(graph.members_of(container) ^ members)

    pairs_off = 0
    for pair in {(container, member) for _, container, member in writes} | set(planned_writes):
        seen = (writes[("POST", *pair)], writes[("DELETE", *pair)])
        most = planned_writes.get(pair, (0, 0))
        pairs_off += seen != most if pair in exact_writes else seen[0] > most[0] or seen[1] > most[1]
    kinds_of: dict[str, set[str]] = defaultdict(set)
    for planned in soak.messages:
        kinds_of[planned.kind].add(planned.request_id)
    target_not_found_elsewhere: int = sum(
        1
        for request_id, values in terminal.items()
        for outcome in values
        if outcome == "dead_lettered:TargetNotFound" and request_id not in kinds_of.get("doomed", ())
    )
    reasons = Counter(entry.reason for entry in dead)
    undocumented = sum(n for reason, n in reasons.items() if reason not in DOCUMENTED_REASONS)
    deepest = max([soak.max_delivery_count, *(entry.delivery_count for entry in dead)])
    stats = QueueTotals.of(queues)
    left = sum(queue.active_count + queue.scheduled_count + queue.locked_count for queue in queues)
    settled = stats.completed + stats.dead_lettered
    accepted = stats.sent  # duplicates dropped are not counted as sent
    n = len(soak.messages)
    invariants = [
        ("every request reached a terminal state", str(n), str(reached), reached == n),
        (
            "every replayed sealed copy reached a terminal state",
            str(len(replays)),
            str(replays_ended),
            replays_ended == len(replays),
        ),
        ("no outcome counts a forged attempt", "0", str(forged_attempts), forged_attempts == 0),
        ("no outcome dates a forged first attempt", "0", str(forged_first), forged_first == 0),
        ("no job or HR event row written by a non-row", "0", str(facts["forged_rows"]), facts["forged_rows"] == 0),
        ("no removal noted by a forged expiryOf", "0", str(facts["forged_removals"]), facts["forged_removals"] == 0),
        ("every terminal outcome is one its message allows", "0", str(len(not_allowed)), not not_allowed),
        (
            "every released request names the holders expected",
            "0",
            str(released_unexpected),
            released_unexpected == 0,
        ),
        (
            "no released without holder over the app's member",
            "0",
            str(len(soak.released_over_app_member)),
            not soak.released_over_app_member,
        ),
        (
            "every time-bound grant made reached its expiry",
            str(len(due)),
            str(expiries_ended),
            expiries_ended == len(due),
        ),
        ("every overlapping step ended within its slot", "0", str(late_steps), late_steps == 0),
        ("nothing scheduled ran before its time", "0", str(len(early_ran)), not early_ran),
        ("every Service Bus message settled exactly once", str(accepted), str(settled), accepted == settled),
        ("final membership equals the plan (pairs wrong)", "0", str(wrong_membership), wrong_membership == 0),
        ("membership writes (204s) as planned (pairs off)", "0", str(pairs_off), pairs_off == 0),
        (
            "no write reached the deleted unit after deletion",
            "0",
            str(doomed_after_deletion),
            doomed_after_deletion == 0,
        ),
        (
            "TargetNotFound only for the deleted unit",
            "0",
            str(target_not_found_elsewhere),
            target_not_found_elsewhere == 0,
        ),
        ("dead-letter reasons outside the documented set", "0", str(undocumented), undocumented == 0),
        ("highest delivery count <= MaxDeliveryCount", "<= 10", str(deepest), deepest <= 10),
        ("nothing left in the queue", "0", str(left), left == 0),
        (
            "every confirming copy scheduled ran",
            str(confirming.scheduled),
            str(sum(confirming.ran.values())),
            confirming.scheduled == sum(confirming.ran.values()),
        ),
        (
            "every late landing within its write's window",
            "0",
            str(late.outside_window),
            late.outside_window == 0,
        ),
        (
            "late-landing pairs' statuses true of the directory",
            "0",
            str(facts["late_statuses_untrue"]),
            facts["late_statuses_untrue"] == 0,
        ),
        ("log lines with a token or secret", "0", str(len(scan.leaks)), not scan.leaks),
        ("invocations raising other than an injected crash", "0", str(len(scan.escaped)), not scan.escaped),
    ]
    numbers: dict[str, Any] = {
        "requests_with_more_than_one_terminal_outcome": more_than_one,
        "replays": len(soak.replays),
        "expiry_sweep_sent": soak.swept,
        "early_replays": len(soak.early_replays),
        "deliveries_before_their_time": len(soak.early_deliveries),
        "deliveries_before_their_time_deferred": deferred,
        "kinds": dict(Counter(planned.kind for planned in soak.messages)),
        "dead_letter_reasons": dict(reasons),
        "queue": {
            "sent": stats.sent,
            "duplicates_dropped": stats.duplicates_dropped,
            "completed": stats.completed,
            "abandoned": stats.abandoned,
            "dead_lettered": stats.dead_lettered,
            "locks_expired": stats.locks_expired,
        },
        "late_landing_pairs": {
            "pairs": len(soak.late),
            "scripts": dict(Counter(scenario.script for scenario in soak.late)),
            "held_writes": late.held,
            "late_landings": late.landed,
            "late_landings_that_wrote": late.wrote,
            "late_landings_after_a_newer_intent": late.after_newer,
            "held_writes_not_landed_at_their_moment": late.held - late.landed,
            "release_storage_errors": soak.faults["ledger_lease_return_busy"],
            "confirming_copies": confirming.of(soak.scripted_requests),
        },
        "confirming_copies": sum(confirming.ran.values()),
        "late_landing_examples": [
            _late_timeline(scenario, records, graph)
            for scenario in soak.late
            if {step.request_id for step in scenario.steps} & ({key for key, _ in not_allowed} | set(soak.late_untrue))
            or (scenario.member in graph.members_of(scenario.container)) != (scenario.steps[-1].action == "add")
        ][:3],
        "overlapping_pairs": {
            "pairs": len(soak.overlaps),
            "preexisting": sum(overlap.seeded for overlap in soak.overlaps),
            "first_add_in_doubt": doubted,
            "preexisting_ended_as_the_app_s": made_by_app,
            "steps": sum(len(overlap.steps) for overlap in soak.overlaps),
        },
        "not_allowed_examples": [(*key, descriptions.get(key, "")) for key in not_allowed[:5]],
        "released_over_app_member_examples": soak.released_over_app_member[:5],
        "ran_early_examples": early_ran[:5],
        "not_terminal_examples": [
            (planned.request_id, planned.kind) for planned in soak.messages if not terminal.get(planned.request_id)
        ][:5],
        "leak_examples": scan.leaks[:3],
        "escaped_examples": scan.escaped[:3],
        "graph_faults_not_consumed": graph.pending_faults,
    }
    return Report(invariants=invariants, faults=soak.faults, outcomes=outcomes, numbers=numbers)


@dataclass(frozen=True, slots=True)
class Confirming:
    """The confirming copies (`shared.service.membership.Result.confirm_at`): how many terminal outcomes announced
    one (their description says the request "is carried out once more"), and how many of those a later terminal
    outcome of the same message followed, by request id."""

    scheduled: int
    ran: dict[str, int]

    def of(self, request_ids: set[str]) -> int:
        """How many of `request_ids`' confirming copies ran."""
        return sum(n for request_id, n in self.ran.items() if request_id in request_ids)


def _confirming_copies(records: list[Mapping[str, Any]]) -> Confirming:
    """Each terminal outcome announcing a confirming copy, and whether one of its message (the same producer,
    request and original MessageId) with a higher attempt ended later: that copy ran."""
    ends: dict[tuple[str, str, str], list[tuple[int, str, bool]]] = defaultdict(list)
    for record in list(records):
        if not record.get("terminal"):
            continue
        key = (str(record.get("producer")), str(record.get("requestId")), str(record.get("originalMessageId")))
        announced = "is carried out once more" in str(record.get("description") or "")
        ends[key].append((int(record.get("attempts") or 0), str(record.get("finishedAt") or ""), announced))
    scheduled = 0
    ran: Counter[str] = Counter()
    for (_, request_id, _), lines in ends.items():
        for attempts, finished, announced in lines:
            if not announced:
                continue
            scheduled += 1
            ran[request_id] += any(later > attempts and at >= finished for later, at, _ in lines)
    return Confirming(scheduled=scheduled, ran=dict(ran))


@dataclass(frozen=True, slots=True)
class LateFindings:
    """What became of the ``late_landing`` pairs' held writes: how many were held, landed at their moment, wrote (the
    double answered 204), wrote after a newer step of their pair had ended, and landed later than the app's window
    (`UNCERTAIN_WINDOW`) after the delivery that sent them began."""

    held: int
    landed: int
    wrote: int
    after_newer: int
    outside_window: int


def _late_landings(soak: Soak, records: list[Mapping[str, Any]]) -> LateFindings:
    ended: dict[str, float] = {}  # each request's first terminal outcome, virtual epoch seconds
    for record in list(records):
        if record.get("terminal") and isinstance(record.get("finishedAt"), str):
            at = datetime.fromisoformat(record["finishedAt"]).timestamp()
            request_id = str(record.get("requestId"))
            ended[request_id] = min(ended.get(request_id, at), at)
    held = landed = wrote = after_newer = outside = 0
    window = UNCERTAIN_WINDOW.total_seconds()
    for scenario in soak.late:
        ids = [step.request_id for step in scenario.steps]
        for landing in scenario.landings:
            held += landing.fault is not None
            if landing.landed_at is None or landing.armed_at is None:
                continue
            landed += 1
            outside += landing.landed_at - landing.armed_at > window
            if landing.status != 204:
                continue
            wrote += 1
            newer = ids[ids.index(landing.request_id) + 1 :]
            after_newer += any(ended.get(request_id, math.inf) <= landing.landed_at for request_id in newer)
    return LateFindings(held=held, landed=landed, wrote=wrote, after_newer=after_newer, outside_window=outside)


def _late_timeline(scenario: LateScenario, records: list[Mapping[str, Any]], graph: GraphDouble) -> dict[str, Any]:
    """A ``late_landing`` pair's timeline, in seconds after its start: its steps, each delivery's outcome line
    (request, attempt, outcome, reason), its landings (moment, armed, landed, answer), and the pair's Graph writes."""
    start = EPOCH.timestamp() + scenario.steps[0].delay
    ids = {step.request_id for step in scenario.steps}
    lines = sorted(
        (
            round(datetime.fromisoformat(record["finishedAt"]).timestamp() - start, 1),
            str(record.get("requestId")),
            record.get("attempts"),
            str(record.get("outcome")),
            record.get("reason"),
        )
        for record in list(records)
        if record.get("requestId") in ids and isinstance(record.get("finishedAt"), str)
    )

    def since(at: float | None) -> float | None:
        return None if at is None else round(at - start, 1)

    return {
        "script": scenario.script,
        "pair": scenario.pair,
        "producer": scenario.producer,
        "steps": [(step.request_id, round(step.delay + EPOCH.timestamp() - start, 1)) for step in scenario.steps],
        "deliveries": lines,
        "landings": [
            (landing.request_id, since(landing.at), since(landing.armed_at), since(landing.landed_at), landing.status)
            for landing in scenario.landings
        ],
        "graph_writes": [
            f"{entry.method} {entry.status}"
            for entry in graph.requests
            if entry.method in ("POST", "DELETE") and _member_of(entry) == scenario.member
        ],
        "member_at_the_end": scenario.member in graph.members_of(scenario.container),
    }


def _misses(ending: Ending, there: bool, seen: tuple[int, int], terminal: Mapping[str, list[str]]) -> int:
    """How far what happened to an overlapping pair (the member `there` or not, the 204 adds and removals `seen`, the
    `terminal` outcomes) is from `ending`: the number of things it does not allow."""
    outcomes = sum(
        outcome not in {*allowed, "duplicate"}
        for key, allowed in ending.outcomes.items()
        for outcome in terminal.get(key, [])
    )
    return outcomes + (ending.member != there) + (seen != (ending.adds, ending.removals))


#: Reasons an add's attempt ends with when its write may be in doubt (a 5xx, a timeout, the ledger failing around it).
_IN_DOUBT_REASONS = frozenset({"GraphUnavailable", "LedgerUnavailable"})


def _outcome(record: Mapping[str, Any]) -> str:
    """A terminal outcome as `ALLOWED` and `grants_local.soak_model` write it: ``dead_lettered:<reason>``, or
    ``released [<holders>]``, or the outcome."""
    outcome = str(record.get("outcome"))
    if outcome == "dead_lettered":
        return f"dead_lettered:{record.get('reason')}"
    if outcome != "released":
        return outcome
    held_by = record.get("heldBy")
    holders = [holder for holder in held_by if isinstance(holder, Mapping)] if isinstance(held_by, list) else []
    named = [
        f"{holder.get('producer')} {holder.get('requestId')}"
        + (
            f" until {datetime.fromisoformat(holder['expiresAt']).astimezone(UTC).isoformat()}"
            if holder.get("expiresAt")
            else ""
        )
        for holder in holders
        if holder.get("preexisting") is not True
    ]
    return released(named, preexisting=any(holder.get("preexisting") is True for holder in holders))


def _until(expires_at: object) -> str:
    """A holder's expiry as `_holder` names it (UTC, ISO 8601), "" when it has none."""
    if not isinstance(expires_at, str):
        return ""
    return f" until {datetime.fromisoformat(expires_at).astimezone(UTC).isoformat()}"


def _coarse(outcome: str) -> str:
    """An outcome as the report counts it (a ``released`` one by what held the membership)."""
    if not outcome.startswith("released"):
        return outcome
    if outcome == released():
        return "released (no holder)"
    return "released (pre-existing)" if outcome == released(preexisting=True) else "released (held by a grant)"


def _early_deliveries(soak: Soak, records: list[Mapping[str, Any]]) -> tuple[list[tuple[str, str, str]], int]:
    """The deliveries of a sealed message before the time it was sealed for (`Soak.early_deliveries`) that did more
    than wait for it (MessageId, outcome, start), and how many waited: ``deferred`` (or, their copy for then not sent,
    left to wait, their description saying so)."""
    ended: dict[tuple[str, str], list[Mapping[str, Any]]] = defaultdict(list)
    for record in list(records):
        ended[(str(record.get("messageId")), str(record.get("startedAt")))].append(record)
    ran: list[tuple[str, str, str]] = []
    deferred = 0
    for message_id, started, _ in soak.early_deliveries:
        lines = ended.get((message_id, started), [])  # none: the invocation died before the function ran
        did = [r for r in lines if r.get("outcome") != "deferred" and "Not before" not in str(r.get("description"))]
        ran += [(message_id, str(record.get("outcome")), started) for record in did]
        deferred += bool(lines) and not did
    return ran, deferred


def _member_of(entry: Any) -> str | None:
    if entry.method == "DELETE":
        parts = entry.path.split("/")
        return parts[-2] if len(parts) >= 2 else None
    body = entry.body if isinstance(entry.body, dict) else {}
    reference = body.get("@odata.id")
    return reference.rsplit("/", 1)[-1] if isinstance(reference, str) else None


def print_report(report: Report, out: TextIO) -> None:
    out.write(f"\n{'invariant':<52} {'expected':>9} {'actual':>9}  result\n{'-' * 80}\n")
    for name, expected, actual, ok in report.invariants:
        out.write(f"{name:<52} {expected:>9} {actual:>9}  {'PASS' if ok else 'FAIL'}\n")
    out.write("\nfaults injected (triggered)\n")
    for fault, n in sorted(report.faults.items()):
        out.write(f"  {fault:<34} {n:>7}\n")
    out.write("\nterminal outcomes\n")
    for outcome, n in sorted(report.outcomes.items()):
        out.write(f"  {outcome:<34} {n:>7}\n")
    out.write("\n")
    for key, value in report.numbers.items():
        out.write(f"  {key}: {json.dumps(value)}\n")
    out.write(f"\n{'ALL INVARIANTS HOLD' if report.passed else 'INVARIANT FAILED'}\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=int(datetime.now(UTC).timestamp()) % 100_000)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args(argv)
    print(f"soak: {args.messages} messages, seed {args.seed}", flush=True)
    report = asyncio.run(run_soak(count=args.messages, seed=args.seed, concurrency=args.concurrency))
    print_report(report, sys.stdout)
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
