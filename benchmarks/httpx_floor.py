"""The floor of the CPU comparison: a bare httpx POST loop, in a process of its own.

``python -m benchmarks.httpx_floor --unit AU --count N [--concurrency 16]`` with ``GRAPH_BASE_URL``,
``IDENTITY_ENDPOINT`` and ``IDENTITY_HEADER`` in the environment: one token from the App Service token
endpoint (fetched before the clock starts), one `httpx.AsyncClient` with default settings, then N POSTs of
``{"@odata.id": ...}`` to ``/directory/administrativeUnits/AU/members/$ref``, `concurrency` at a time, each
answer counted by status and nothing else. Prints one JSON line like `benchmarks.engine`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from collections import Counter
from urllib.parse import urlsplit

import httpx

from benchmarks.directory import member_id


async def run(*, unit: str, count: int, concurrency: int) -> dict[str, object]:
    base_url = os.environ["GRAPH_BASE_URL"].rstrip("/")
    root = urlsplit(base_url)
    outcomes: Counter[str] = Counter()
    async with httpx.AsyncClient() as client:
        answer = await client.get(
            os.environ["IDENTITY_ENDPOINT"],
            params={"resource": f"{root.scheme}://{root.netloc}", "api-version": "2019-08-01"},
            headers={"X-IDENTITY-HEADER": os.environ["IDENTITY_HEADER"]},
        )
        headers = {"Authorization": f"Bearer {answer.json()['access_token']}"}
        url = f"{base_url}/directory/administrativeUnits/{unit}/members/$ref"

        async def worker(ids: range) -> None:
            for n in ids:
                body = {"@odata.id": f"{base_url}/directoryObjects/{member_id(n)}"}
                response = await client.post(url, json=body, headers=headers)
                outcomes[str(response.status_code)] += 1

        cpu, wall = time.process_time(), time.perf_counter()
        await asyncio.gather(*(worker(range(i, count, concurrency)) for i in range(concurrency)))
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return {"cpu_s": cpu, "wall_s": wall, "outcomes": dict(outcomes)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--unit", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(unit=args.unit, count=args.count, concurrency=args.concurrency))), flush=True)


if __name__ == "__main__":
    main()
