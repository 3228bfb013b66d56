"""A reverse proxy in front of the tests' Prefect server that passes a flow run's final state write through
to the server and then answers 503, once: the server has stored the state, the client never heard so.
Prefect's client retries the write and the server refuses the repeat (same transition id), so the engine
ends with the server's copy of the final state, which carries no result data."""

from __future__ import annotations

import json
import re

from aiohttp import web
from multidict import CIMultiDict

from write_recorder import WriteRecorder, relay_websocket


class LostAnswerProxy(WriteRecorder):
    """WriteRecorder's proxy (its thread, loop, port and session), watching no deployment writes."""

    FLOW_RUN_STATE = re.compile(r"^/api/flow_runs/([0-9a-f-]{36})/set_state$")

    def __init__(self, final_types: tuple[str, ...] = ("COMPLETED", "FAILED")):
        super().__init__(watch={}, hold_until=0, hold_seconds=0)
        self.final_types = final_types
        self.lost: list[str] = []  # flow run ids whose final state's answer was lost

    async def _handle(self, request):
        if request.headers.get("upgrade", "").lower() == "websocket":
            return await relay_websocket(self.session, self.upstream, request)
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in self.HOP_BY_HOP}
        async with self.session.request(request.method, self.upstream + request.path_qs, headers=headers,
                                        data=body, allow_redirects=False) as answer:
            payload = await answer.read()
            answer_headers = [(k, v) for k, v in answer.headers.items() if k.lower() not in self.HOP_BY_HOP]
            status = answer.status
        run_id = self._final_state_write(request, body)
        if run_id and status < 300 and run_id not in self.lost:
            self.lost.append(run_id)
            return web.Response(status=503, text="answer lost on the way back")
        return web.Response(status=status, body=payload, headers=CIMultiDict(answer_headers))

    def _final_state_write(self, request, body: bytes) -> str | None:
        match = self.FLOW_RUN_STATE.match(request.path) if request.method == "POST" else None
        if not match:
            return None
        try:
            proposed = json.loads(body)["state"]["type"]
        except (ValueError, KeyError, TypeError):
            return None
        return match.group(1) if proposed in self.final_types else None
