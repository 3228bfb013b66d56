"""The floor: what the same work costs with no Git and no planning.

Run by bench/run.py as a subprocess, through the counting proxy, with the
Prefect client prefect-gitops uses (PrefectClient from get_client()) and the
same bounded concurrency (prefect_gitops.adapters.prefect_api.bounded_gather).

  floor.py patch --image IMAGE --pools k8s-00,... --concurrency 4
      reads the pools and deployments first (not timed), then times one bare async
      loop of PATCH requests: each listed pool's base job template with image default
      IMAGE, and every deployment of the other pools with job_variables.image = IMAGE
      (the same bodies prefect-gitops writes for "a new image for all N").
  floor.py patch --image IMAGE --pools <every pool> --every-deployment --key bench_floor
      the first apply's floor: every pool's template and every deployment written once (the takeover
      writes each target once), the deployments' value under a key nothing manages.
  floor.py read
      times one paginated read of all deployments, 200 per page, unfiltered.

Prints one JSON line: {"seconds": ..., "requests": ..., "writes": ...}.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import sys
import time

PAGE = 200


async def _all_deployments(client) -> list:
    out, offset = [], 0
    while True:
        page = await client.read_deployments(limit=PAGE, offset=offset)
        out.extend(page)
        if len(page) < PAGE:
            return out
        offset += PAGE


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["patch", "read"])
    parser.add_argument("--image", default="registry.example.com/flows:floor")
    parser.add_argument("--pools", default="", help="pools whose image default is written")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--every-deployment", action="store_true", help="write the written pools' deployments too")
    parser.add_argument("--key", default="image", help="the job variable written in each deployment")
    args = parser.parse_args()

    from prefect import get_client
    from prefect.client.schemas.actions import DeploymentUpdate, WorkPoolUpdate

    from prefect_gitops.adapters.prefect_api import bounded_gather

    counted = {"n": 0}

    async def hook(request):
        counted["n"] += 1

    async with get_client() as client:
        client._client.event_hooks["request"].append(hook)
        await client.read_work_pools(limit=1)  # open the connection (and fetch the CSRF token) outside the timing

        if args.mode == "read":
            counted["n"] = 0
            start = time.perf_counter()
            found = await _all_deployments(client)
            seconds = time.perf_counter() - start
            print(json.dumps({"seconds": seconds, "requests": counted["n"], "deployments": len(found)}))
            return

        pools_to_write = [p for p in args.pools.split(",") if p]
        pools = {p.name: p for p in await client.read_work_pools()}
        deployments = [d for d in await _all_deployments(client)
                       if d.work_pool_name in pools and (args.every_deployment or d.work_pool_name not in pools_to_write)
                       and pools[d.work_pool_name].type == "kubernetes"]
        jobs = []
        for name in pools_to_write:
            template = copy.deepcopy(pools[name].base_job_template)
            template["variables"]["properties"]["image"]["default"] = args.image

            def write_pool(name=name, template=template):
                return client.update_work_pool(name, WorkPoolUpdate(base_job_template=template))
            jobs.append(write_pool)
        for d in deployments:
            variables = {**(d.job_variables or {}), args.key: args.image}

            def write_deployment(d=d, variables=variables):
                return client.update_deployment(d.id, DeploymentUpdate(job_variables=variables))
            jobs.append(write_deployment)

        counted["n"] = 0
        start = time.perf_counter()
        outcomes = await bounded_gather(args.concurrency, jobs)
        seconds = time.perf_counter() - start
        errors = [repr(o) for o in outcomes if isinstance(o, BaseException)]
        print(json.dumps({"seconds": seconds, "requests": counted["n"], "writes": len(jobs),
                          "errors": errors[:5], "error_count": len(errors)}))
        if errors:
            sys.exit(1)


if __name__ == "__main__":
    asyncio.run(main())
