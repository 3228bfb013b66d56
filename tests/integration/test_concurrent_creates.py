"""Two reconciles that create the same thing at the same moment (the environment's lock limit, a
control queue shared by two environments): the one that loses the race carries on, it does not crash."""

from __future__ import annotations

import asyncio

from helpers import _with_client, create_pool, run, uid

from prefect_gitops.adapters.locks import ensure_limit
from prefect_gitops.adapters.prefect_api import PrefectAPI
from prefect_gitops.plan import Change, QueueActual


def test_racing_creates_of_a_concurrency_limit_all_succeed():
    name = f"prefect-gitops-env-race{uid()}"

    async def go(client):
        # all reads go out before any create: every caller but one gets the server's 409
        await asyncio.gather(*(ensure_limit(client, name, 1, enforce=True) for _ in range(3)))
        return await client.read_global_concurrency_limit_by_name(name)

    limit = run(_with_client(go))
    assert (limit.limit, limit.active) == (1, True)


def test_racing_creates_of_a_work_queue_all_succeed():
    pool = f"k8s-{uid()}"
    create_pool(pool)
    queue = QueueActual(name=f"{pool}/prefect-gitops", id=None, values={})
    changes = [Change(target_type="work_queue", target=queue.name, key=key, action="set", new=value, reason="desired")
               for key, value in (("priority", 1), ("concurrency_limit", 2))]

    async def go(client):
        api = PrefectAPI(client)
        await asyncio.gather(*(api.write_work_queue(queue, changes) for _ in range(3)))
        return await client.read_work_queue_by_name("prefect-gitops", work_pool_name=pool)

    created = run(_with_client(go))
    assert (created.priority, created.concurrency_limit) == (1, 2)


def test_racing_first_writes_register_the_block_type_once():
    # on a new server, two environments' first state writes both create the state block's type
    from prefect.blocks.core import Block

    from prefect_gitops.adapters.state_store import register_block_type

    block_class = type(f"RaceState{uid()}", (Block,), {"__annotations__": {"state_json": str}, "__module__": __name__})

    async def go(client):
        await asyncio.gather(*(register_block_type(client, block_class(state_json="{}")) for _ in range(3)))
        return await client.read_block_type_by_slug(block_class.get_block_type_slug())

    assert run(_with_client(go)).name == block_class.get_block_type_name()
