"""A reverse proxy in front of the tests' Prefect server that passes a chosen write through to the server and
then answers 503, once per object: the server has done the write, the client never heard so. Prefect's client
retries a 503 with the same request.

- A flow run's final state write (the default): the server refuses the repeat (same transition id), so the
  engine ends with the server's copy of the final state, which carries no result data.
- A flow run's creation from a deployment (`flow_run_creates`): without an idempotency key the repeat makes a
  second flow run."""

from __future__ import annotations

import json
import re
from typing import Callable

from aiohttp import web

from write_recorder import ApiProxy

FLOW_RUN_STATE = re.compile(r"^/api/flow_runs/([0-9a-f-]{36})/set_state$")
FLOW_RUN_CREATE = re.compile(r"^/api/deployments/([0-9a-f-]{36})/create_flow_run$")

# which request's answer to lose: (path, body) of a POST -> the id of the object it writes, or None
Chooser = Callable[[str, bytes], "str | None"]


def final_state_writes(path: str, body: bytes, final_types=("COMPLETED", "FAILED")) -> str | None:
    """A flow run's Completed or Failed state write: the flow run's id."""
    match = FLOW_RUN_STATE.match(path)
    if not match:
        return None
    try:
        proposed = json.loads(body)["state"]["type"]
    except (ValueError, KeyError, TypeError):
        return None
    return match.group(1) if proposed in final_types else None


def flow_run_creates(path: str, body: bytes) -> str | None:
    """A flow run created from a deployment (`run_deployment`): `<deployment id>:<flow run name>`."""
    match = FLOW_RUN_CREATE.match(path)
    if not match:
        return None
    try:
        name = json.loads(body).get("name")
    except (ValueError, AttributeError):
        name = None
    return f"{match.group(1)}:{name}"


class LostAnswerProxy(ApiProxy):
    """Forwards everything; answers 503 to the first write `lose` chooses for each object, after the server
    has done it."""

    def __init__(self, lose: Chooser = final_state_writes):
        super().__init__()
        self.lose = lose
        self.lost: list[str] = []  # ids of the objects whose write's answer was lost, in order

    async def _handle(self, request):
        if request.headers.get("upgrade", "").lower() == "websocket":
            return await self._websocket(request)
        body = await request.read()
        status, payload, headers = await self._forward(request, body)
        chosen = self.lose(request.path, body) if request.method == "POST" else None
        if chosen and status < 300 and chosen not in self.lost:
            self.lost.append(chosen)
            return web.Response(status=503, text="answer lost on the way back")
        return web.Response(status=status, body=payload, headers=headers)
