"""Installed size of some distributions and everything they depend on, in the interpreter that runs this.

``python benchmarks/sizes.py NAME...`` (stdlib only, so it runs in any venv) prints one JSON line: the
closure of NAME... over installed ``Requires-Dist`` (requirements that need an extra are left out, as are
those not installed, e.g. for another platform), and the sum of the sizes of the files each installed
distribution's ``RECORD`` lists (its code, data and metadata, and the ``.pyc`` files pip compiled).
"""

from __future__ import annotations

import json
import re
import sys
from importlib import metadata

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(names: list[str]) -> dict[str, metadata.Distribution]:
    """The installed distributions `names` need, by canonical name."""
    found: dict[str, metadata.Distribution] = {}
    todo = [_canonical(n) for n in names]
    while todo:
        name = todo.pop()
        if name in found:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        found[name] = dist
        for requirement in dist.requires or []:
            if "extra" in requirement.partition(";")[2]:
                continue
            match = _NAME.match(requirement)
            if match:
                todo.append(_canonical(match.group(1)))
    return found


def installed_bytes(dist: metadata.Distribution) -> int:
    total = 0
    for file in dist.files or []:
        located = file.locate()
        if located.is_file():  # type: ignore[attr-defined]
            total += located.stat().st_size  # type: ignore[attr-defined]
    return total


def main() -> None:
    dists = closure(sys.argv[1:])
    sizes = {name: installed_bytes(dist) for name, dist in sorted(dists.items())}
    print(json.dumps({"bytes": sum(sizes.values()), "distributions": sizes}))


if __name__ == "__main__":
    main()
