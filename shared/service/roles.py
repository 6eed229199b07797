"""The template of each directory role object id, looked up in Graph once per process.

The grant policy judges roles by template; a message may name a role by its object id instead. `RoleTemplates`
answers ``GET /directoryRoles/{id}``'s ``roleTemplateId`` and caches it (concurrent callers wait for one look-up).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from shared.adapters.graph import GraphClient, path, raise_for_graph
from shared.core.contract import DirectoryRole, Guid
from shared.core.errors import PermanentError, Reason

__all__ = ["RoleTemplates"]


@dataclass
class RoleTemplates:
    """Role object id → template id, looked up once per process (concurrent callers wait)."""

    _known: dict[str, Guid] = field(default_factory=dict)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def template_of(self, target: DirectoryRole, graph: GraphClient) -> Guid:
        if target.role_template_id is not None:
            return target.role_template_id
        assert target.id is not None
        if target.id in self._known:
            return self._known[target.id]
        async with self._lock:
            if target.id not in self._known:
                self._known[target.id] = await self._look_up(target.id, graph)
        return self._known[target.id]

    @staticmethod
    async def _look_up(role_id: Guid, graph: GraphClient) -> Guid:
        response = await graph.send("GET", path("directoryRoles", role_id))
        if response.status == 404:
            raise PermanentError(
                Reason.TARGET_NOT_FOUND,
                f"directory role {role_id} does not exist in this tenant",
                graph=response.answer(),
            )
        if response.status != 200:
            raise_for_graph(response, permission="RoleManagement.ReadWrite.Directory")
        return Guid(str((response.body or {}).get("roleTemplateId", "")).lower())
