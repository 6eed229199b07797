"""The benchmark's directory: one administrative unit and N users with predictable ids (stdlib only, so that
the msgraph-sdk client in its own venv shares it)."""

UNIT = "ae000000-0000-4000-8000-00000000be11"


def member_id(n: int) -> str:
    """The id of the benchmark's n-th user."""
    return f"{n:08x}-0000-4000-8000-0000000000be"
