"""The msgraph-sdk side of the comparison, run in ``.venv-msgraph`` (msgraph-sdk is not one of our dependencies).

``.venv-msgraph/bin/python -m benchmarks.msgraph_client --unit AU --count N [--concurrency 16]`` with
``GRAPH_BASE_URL``, ``IDENTITY_ENDPOINT`` and ``IDENTITY_HEADER`` in the environment: builds a
`GraphServiceClient` the way a msgraph-sdk-based function app would (azure-identity's async
`ManagedIdentityCredential` with its default transport, msgraph-core's default middleware), pointed at the
Graph double (``request_adapter.base_url``; the auth provider is told to allow ``127.0.0.1``, which kiota
accepts over plain http as a localhost name), then sends N
``directory.administrative_units.by_administrative_unit_id(AU).members.ref.post(ReferenceCreate(...))``,
`concurrency` at a time. Prints one JSON line: CPU seconds (``time.process_time``), wall seconds, and the
outcomes counted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from collections import Counter
from urllib.parse import urlsplit

from azure.identity.aio import ManagedIdentityCredential
from msgraph import GraphServiceClient
from msgraph.generated.models.reference_create import ReferenceCreate
from msgraph.graph_request_adapter import GraphRequestAdapter
from msgraph_core.authentication import AzureIdentityAuthenticationProvider

from benchmarks.directory import member_id


def graph_client(credential: ManagedIdentityCredential, base_url: str) -> GraphServiceClient:
    """A client for the Graph root `base_url`, with tokens for ``<scheme://host>/.default``."""
    root = urlsplit(base_url)
    auth = AzureIdentityAuthenticationProvider(
        credential, scopes=[f"{root.scheme}://{root.netloc}/.default"], allowed_hosts=[root.hostname or ""]
    )
    adapter = GraphRequestAdapter(auth)
    adapter.base_url = base_url.rstrip("/")
    return GraphServiceClient(request_adapter=adapter)


async def run(*, unit: str, count: int, concurrency: int) -> dict[str, object]:
    base_url = os.environ["GRAPH_BASE_URL"].rstrip("/")
    credential = ManagedIdentityCredential()
    client = graph_client(credential, base_url)
    members = client.directory.administrative_units.by_administrative_unit_id(unit).members
    outcomes: Counter[str] = Counter()

    async def worker(ids: range) -> None:
        for n in ids:
            body = ReferenceCreate(odata_id=f"{base_url}/directoryObjects/{member_id(n)}")
            try:
                await members.ref.post(body)
                outcomes["granted"] += 1
            except Exception as error:  # counted: the figures show every outcome
                outcomes[type(error).__name__] += 1

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker(range(i, count, concurrency)) for i in range(concurrency)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    await credential.close()
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
