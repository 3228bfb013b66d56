"""Run a command and report its wall time and peak RSS (benchmark only).

    python bench/measure.py RESULT.json COMMAND [ARGS...]

The orchestrator cannot take the peak RSS from its own wait4(): on Linux an exec'd child's
ru_maxrss starts from the RSS of the process it was forked from, and the orchestrator holds
prefect and the recorded states it measured. This small process (a bare interpreter, ~10 MB)
spawns the command with posix_spawn, waits for it with wait4, and writes
{"wall": s, "rss_mb": MB, "exit": code} to RESULT.json; it exits with the command's exit code.
"""

from __future__ import annotations

import json
import os
import sys
import time


def main() -> int:
    result, argv = sys.argv[1], sys.argv[2:]
    start = time.perf_counter()
    pid = os.posix_spawnp(argv[0], argv, os.environ)
    _, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    with open(result, "w") as out:
        json.dump({"wall": wall, "rss_mb": usage.ru_maxrss / 1024, "exit": code}, out)
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main())
