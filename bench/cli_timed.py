"""`prefect-gitops` with a timer around reconcile() (benchmark only).

Same entry point as the console script (prefect_gitops.cli:main), same imports; the only addition
is that the reconcile layer's duration inside the flow is appended to $BENCH_RECONCILE_TIME, so the
benchmark can report "time inside the flow" both as the flow run's start-to-end (from the API) and as
the time spent in reconcile() itself.
"""

from __future__ import annotations

import os
import sys
import time

import prefect_gitops.flows as flows

_reconcile = flows.run_reconcile


async def _timed(*args, **kwargs):
    start = time.perf_counter()
    try:
        return await _reconcile(*args, **kwargs)
    finally:
        path = os.environ.get("BENCH_RECONCILE_TIME")
        if path:
            with open(path, "a") as out:
                out.write(f"{time.perf_counter() - start}\n")


flows.run_reconcile = _timed

if __name__ == "__main__":
    from prefect_gitops.cli import main

    sys.argv[0] = "prefect-gitops"
    main()
