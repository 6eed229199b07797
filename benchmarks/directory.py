"""The benchmark's directory: one administrative unit and N users with predictable ids (stdlib only, so that
the msgraph-sdk client in its own venv shares it)."""

import json

UNIT = "ae000000-0000-4000-8000-00000000be11"


def unit_id(n: int) -> str:
    """The id of the benchmark's n-th administrative unit (the fleet benchmark gives each worker its own)."""
    return f"ae000000-0000-4000-8000-{n:012x}"


def member_id(n: int) -> str:
    """The id of the benchmark's n-th user."""
    return f"{n:08x}-0000-4000-8000-0000000000be"


def grants(count: int, unit: str) -> list[bytes]:
    """N add messages (contract v1) for the first N users in `unit`, request ids ``bench-<n>``."""
    return [
        json.dumps(
            {
                "schemaVersion": 1,
                "requestId": f"bench-{n}",
                "target": {"type": "administrativeUnit", "id": unit},
                "member": {"id": member_id(n), "type": "user"},
                "source": {"system": "bulk", "reference": "bench"},
            }
        ).encode()
        for n in range(count)
    ]
