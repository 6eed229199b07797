"""Newest intent wins, end to end: an HR system's joiner/leaver intents for one member and target (adds, and leavers'
revoke-alls: the membership goes whoever made it), delivered in any order through the local host, with duplicates,
Graph faults, retries and replication delay; the ledger in Azurite. (Grants of several producers, each ending
its own: tests/test_pairs.py's model and tests/test_grants_owned.py.)

The suite runs `INTERLEAVINGS` examples (default 50); ``INTERLEAVINGS=1000 pytest tests/test_interleavings.py``
runs the issue's thousand.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from grants_local.graph_double import Fault, GraphDouble
from tests.conftest import body

EXAMPLES = int(os.environ.get("INTERLEAVINGS", "50"))
_runs: dict[int, Any] = {}

intents = st.lists(
    st.tuples(st.sampled_from(["add", "remove"]), st.integers(0, 3600), st.booleans()),
    min_size=2,
    max_size=4,
    unique_by=lambda intent: intent[1],  # distinct times: "newest" is unambiguous
)


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    planned=intents,
    order=st.randoms(use_true_random=False),
    faults=st.lists(st.sampled_from([503, 504, 429]), max_size=3),
    replication_lookups=st.integers(0, 2),
    member_present=st.booleans(),
)
async def test_the_final_membership_is_the_newest_intent_in_every_interleaving(
    make_run: Callable[..., Any],
    graph: GraphDouble,
    planned: list[tuple[str, int, bool]],
    order: Any,
    faults: list[int],
    replication_lookups: int,
    member_present: bool,
) -> None:
    """Given 2 to 4 intents for one (member, unit) pair, some sent twice (a new MessageId), in a random order, with
    Graph faults on the unit and a member not yet replicated, when all are delivered, then the member is in the
    unit exactly when the newest intent is an add, and every message reached a terminal outcome."""
    run = _runs.get(id(make_run)) or _runs.setdefault(id(make_run), await make_run())  # one app per test run
    unit, member = str(uuid.uuid4()), str(uuid.uuid4())
    graph.add_user(member, visible_after_lookups=replication_lookups)
    graph.add_administrative_unit(unit, members=[member] if member_present else [])
    graph.inject(*(Fault.status(status, path=unit, retry_after=1 if status == 429 else None) for status in faults))
    messages = []
    made = run.clock.utcnow() - timedelta(hours=2)  # every intent made before its first arrival: its time counts
    for number, (action, seconds, twice) in enumerate(planned):
        requested = (made + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")
        message = body(
            requestId=f"{unit[:8]}-{number}",
            action=action,
            target={"type": "administrativeUnit", "id": unit},
            member={"id": member, "type": "user"},
            source={"system": "hr"},
            requestedAt=requested,
            revokeAll=action == "remove" or None,
        )
        messages += [message, message] if twice else [message]
    order.shuffle(messages)
    delivered = await run.deliver(*messages)
    outcomes = {key: o for key, o in delivered.items() if str(o["requestId"]).startswith(unit[:8])}
    newest = max(planned, key=lambda intent: intent[1])
    assert (member in graph.members_of(unit)) == (newest[0] == "add"), (planned, outcomes)
    assert len(outcomes) == len(messages)
    assert {o["outcome"] for o in outcomes.values()} <= {
        "granted",
        "already_member",
        "revoked",
        "not_member",
        "released",  # a revoke-all older than an add carried out before it: the add's grant still holds
        "superseded",
        "duplicate",
    }, outcomes
