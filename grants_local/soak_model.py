"""The soak's own statement of "grants are owned": what one (member, target) pair's steps end as, step by step.

Written from the rules (docs/guarantees.md, the docstring of `shared.core.pairs`), not from the code that carries them
out, so that ``make soak`` checks one against the other. A pair's steps come in slots (`Step.slot`), each slot hours
after the last (the soak sends them so, and checks that each slot's work ended before the next began), so their order
is the plan's; only adds of different producers share a slot (their order within it changes no outcome's set).

The rules, as this module applies them:

- An add makes its producer's grant hold the pair until its expiry (`Step.expires`); it answers ``already_member``
  when the member is there, else ``granted`` (or ``already_member``: an earlier delivery's write landed).
- An add that finds the member there with no add of the app's own that could have made it marks the membership
  *pre-existing*; any write of the app's own that is answered (its add that makes it, a removal) clears that. An add
  of the app's own in doubt when that answer comes makes it the app's (`ending`'s ``doubted``: the soak cannot tell
  from the plan alone whether a fault left one in doubt, so a pre-existing pair has two endings).
- A plain remove (``remove``) or an expiry (``expiry``, the app's own removal at a time-bound add's end) ends its
  producer's grant only. The member is removed when no grant holds the pair any more and the membership is the app's
  (made by it and not pre-existing): ``revoked`` (or ``not_member``: an earlier delivery's removal landed; or, for a
  request carried out already and delivered again, ``released`` with no holder). Otherwise nothing is written and
  the step ends ``released``, naming the grants that hold the pair, or the pre-existing membership when none does,
  or nothing (the app made no membership that is still there). An expiry of a grant its producer's remove ended
  already is ``superseded``.
- A remove with ``revokeAll`` (``revokeAll``) ends every grant older than it and removes the membership, whoever
  made it: ``revoked``, or ``not_member`` when it is not there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import groupby
from typing import Literal

__all__ = ["Ending", "Step", "ending", "released"]

Op = Literal["add", "remove", "revokeAll", "expiry"]
#: The outcomes of a step that removes the member (a ``released`` with no holder: the request delivered again after
#: it was carried out, e.g. when its first delivery died before it could complete the message).
REMOVES = frozenset({"revoked", "not_member", "released []"})


@dataclass(frozen=True, slots=True)
class Step:
    """One step of a pair: `producer`'s add, remove or revoke-all (request `request_id`), or the app's expiry of the
    add `request_id` (`op` ``expiry``), in slot `slot`; an add's `expires` is the slot its grant expires in."""

    slot: int
    producer: str
    op: Op
    request_id: str
    expires: int | None = None

    @property
    def key(self) -> str:
        """The request id its outcome records carry: its own, or for an expiry the app's ``~expire:<add>``."""
        return f"~expire:{self.request_id}" if self.op == "expiry" else self.request_id


@dataclass(slots=True)
class Ending:
    """What a pair's steps end as: each step's allowed terminal outcomes (by `Step.key`; a ``released`` one with the
    holders it names, `released`), whether the member is in the target at the end, and how many Graph writes took
    effect (adds that made the membership, removals that ended it)."""

    outcomes: dict[str, frozenset[str]] = field(default_factory=dict)
    member: bool = False
    adds: int = 0
    removals: int = 0


def released(holders: Iterable[str] = (), *, preexisting: bool = False) -> str:
    """A ``released`` outcome as the soak writes it: the holders it names, sorted (``preexisting`` for a membership
    the app did not make)."""
    named = sorted(holders) + (["preexisting"] if preexisting else [])
    return f"released [{', '.join(named)}]"


def ending(
    steps: Sequence[Step], *, seeded: bool, doubted: bool = False, holder: Callable[[Step], str] | None = None
) -> Ending:
    """What `steps` end as, for a pair whose member is there before the run when `seeded`; `doubted`: an add of the
    app's own was in doubt when the first add found the member there (so it is the app's). `holder` names a grant
    in a ``released`` outcome (default: ``"<producer> <request id>"``)."""
    name = holder or (lambda step: f"{step.producer} {step.request_id}")
    result = Ending(member=seeded)
    applied_add = False  # the app's last answered write was an add
    preexisting = False  # an add found the membership there, and the app had not made it
    grants: dict[str, Step] = {}  # each producer's newest step
    floor: int | None = None  # the slot of the newest revoke-all
    for slot, group in groupby(sorted(steps, key=lambda step: step.slot), key=lambda step: step.slot):
        in_slot = list(group)
        if all(step.op == "add" for step in in_slot):
            for step in in_slot:
                grants[step.producer] = step
            if result.member:
                outcomes = frozenset({"already_member"})
                made = (applied_add and not preexisting) or doubted
                preexisting = preexisting or not made
            else:
                outcomes = frozenset({"granted", "already_member"})
                result.member, result.adds, preexisting = True, result.adds + 1, False
            applied_add = True
            result.outcomes.update({step.key: outcomes for step in in_slot})
            continue
        (step,) = in_slot  # a remove, a revoke-all or an expiry has its slot to itself
        if step.op == "revokeAll":
            floor, preexisting, applied_add = slot, False, False
            result.outcomes[step.key] = frozenset({"revoked", "not_member"} if result.member else {"not_member"})
            result.removals += result.member
            result.member = False
            continue
        if step.op == "expiry":
            newest = grants.get(step.producer)
            if newest is None or newest.op != "add" or newest.request_id != step.request_id:
                result.outcomes[step.key] = frozenset({"superseded"})
                continue
        grants[step.producer] = step
        holders = [
            grant
            for grant in grants.values()
            if grant.op == "add"
            and (grant.expires is None or grant.expires > slot)
            and (floor is None or grant.slot > floor)
        ]
        if not holders and not preexisting and applied_add:
            assert result.member, "a membership the app made is there until it is removed"
            result.outcomes[step.key] = REMOVES
            result.member, result.removals, applied_add = False, result.removals + 1, False
        else:
            named = [name(grant) for grant in holders]
            result.outcomes[step.key] = frozenset({released(named, preexisting=preexisting and not holders)})
    return result
