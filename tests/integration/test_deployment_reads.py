"""Reading many deployments by name: a filtered read per part of the names, a few at once, so the requests
grow with the pages and the server never matches every name again for each page (bench/findings.md)."""

from __future__ import annotations

import json

from helpers import _with_client, create_deployment, create_pool, run, uid

from prefect_gitops.adapters import prefect_api
from prefect_gitops.adapters.prefect_api import PrefectAPI


def test_deployments_are_read_by_parts_of_their_names_exactly(monkeypatch):
    u = uid()
    pool = f"reads-{u}"
    create_pool(pool)
    ids = {}
    for flow in (f"reads-a-{u}", f"reads-b-{u}"):
        for i in range(5):
            ids[f"{flow}/d{i}"] = create_deployment(flow, f"d{i}", pool)
    # d0..d4 exist under both flows: a part's filter (its flows x its deployment names) also matches some
    # names it was not asked for; exactly the asked ones come back
    wanted = sorted(n for n in ids if not n.endswith(("b-" + u + "/d1", "a-" + u + "/d3"))) + [f"reads-a-{u}/none"]
    monkeypatch.setattr(prefect_api, "NAMES_PER_READ", 3)
    deployment_reads: list[str] = []

    async def go(client):
        async def count(request):
            if request.url.path.endswith("/deployments/filter"):
                deployment_reads.append(request.content.decode())
        client._client.event_hooks["request"].append(count)
        return await PrefectAPI(client).read_deployments(wanted)

    found = run(_with_client(go))
    assert {name: d.id for name, d in found.items()} == {n: str(ids[n]) for n in wanted if n in ids}
    assert len(deployment_reads) == 3  # 9 names in parts of 3, each one page
    asked = [json.loads(body)["deployments"]["name"]["any_"] for body in deployment_reads]
    assert all(len(names) <= 3 for names in asked) and {n for names in asked for n in names} == {
        n.split("/", 1)[1] for n in wanted}  # each part names its own few
