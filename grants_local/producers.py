"""The producer registry local runs of several producers use (the tests, the soak): the four kinds of producer, each
on a queue of its own, and two more of the same kinds, so that one run can send as any of them.

``bulk`` is on the grants queue (the tests' default message is bulk's, sent to the grants queue: so it stays in the
interactive lane here), ``ops`` (a bulk team) on the bulk queue in the bulk lane, and ``itsm``, a second ticketing
system. Each has an Entra principal acting for it on the HTTP API (`PRINCIPALS`). ``function_app`` declares a trigger
per producer queue when it is imported with this registry in ``GRANTS_PRODUCERS`` (`declared`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Final

__all__ = ["LOCAL_PRODUCERS", "PRINCIPALS", "declared", "registry_json"]

#: The Entra object id of the principal acting for each producer.
PRINCIPALS: Final[dict[str, str]] = {
    name: f"a0000000-0000-4000-8000-{number:012d}"
    for number, name in enumerate(("ticketing", "hr", "bulk", "other", "ops", "itsm"), start=1)
}
LOCAL_PRODUCERS: Final[dict[str, Any]] = {
    "producers": [
        {
            "name": "ticketing",
            "system": "ticketing",
            "queue": "grants-ticketing",
            "secretSetting": "GRANTS_WEBHOOK_SECRET",
            "principals": [PRINCIPALS["ticketing"]],
        },
        {
            "name": "hr",
            "system": "hr",
            "queue": "grants-hr",
            "hrEventsQueue": "hr-events",
            "principals": [PRINCIPALS["hr"]],
        },
        {"name": "bulk", "system": "bulk", "queue": "grant-membership", "principals": [PRINCIPALS["bulk"]]},
        {"name": "other", "system": "other", "queue": "grants-other", "principals": [PRINCIPALS["other"]]},
        {
            "name": "ops",
            "system": "bulk",
            "queue": "grant-membership-bulk",
            "lane": "bulk",
            "principals": [PRINCIPALS["ops"]],
        },
        {"name": "itsm", "system": "ticketing", "queue": "grants-itsm", "principals": [PRINCIPALS["itsm"]]},
    ]
}


def registry_json() -> str:
    """`LOCAL_PRODUCERS` as the ``GRANTS_PRODUCERS`` setting."""
    return json.dumps(LOCAL_PRODUCERS)


@contextmanager
def declared() -> Iterator[None]:
    """Import ``function_app`` (if it is not yet) with `LOCAL_PRODUCERS` in ``GRANTS_PRODUCERS``, so that each
    producer queue has its registered trigger; the setting is gone again after the block."""
    previous = os.environ.get("GRANTS_PRODUCERS")
    os.environ["GRANTS_PRODUCERS"] = registry_json()
    try:
        import function_app  # noqa: F401 (its triggers)

        yield
    finally:
        if previous is None:
            os.environ.pop("GRANTS_PRODUCERS", None)
        else:
            os.environ["GRANTS_PRODUCERS"] = previous
