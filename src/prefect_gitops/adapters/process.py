"""`process` smoke tests: the command runs on this machine. It proves nothing about the image's isolation."""

from __future__ import annotations

import asyncio
import logging
import os
from typing import TypeAlias

from prefect_gitops.smoke import SmokeResult, SmokeTest

# what smoke tests log to: Prefect's run logger (get_run_logger()) or a plain logger outside a run
RunLogger: TypeAlias = logging.Logger | logging.LoggerAdapter[logging.Logger]

NOT_ISOLATED = ("process smoke test: runs {command} on the worker's machine with SMOKE_IMAGE={image}; "
                "it does NOT run or isolate the image itself")


def tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


async def run_process_test(test: SmokeTest, logger: RunLogger) -> SmokeResult:
    spec = test.policy.process
    assert spec is not None  # resolve() refuses kind process without it
    logger.warning(NOT_ISOLATED.format(command=spec.command, image=test.image))
    env = {**os.environ, **spec.env, "SMOKE_IMAGE": test.image}
    try:
        proc = await asyncio.create_subprocess_exec(
            *spec.command, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    except OSError as exc:
        return SmokeResult(test.id, False, "error", f"cannot start {spec.command[0]!r}: {exc}")
    try:
        output, _ = await asyncio.wait_for(proc.communicate(), timeout=test.policy.timeout_seconds)
    except asyncio.TimeoutError:
        proc.kill()
        output, _ = await proc.communicate()
        return SmokeResult(test.id, False, "timeout", f"no result within {test.policy.timeout_seconds}s",
                           tail(output.decode(errors="replace")))
    log = tail(output.decode(errors="replace"))
    if proc.returncode == 0:
        return SmokeResult(test.id, True, "passed", "exit code 0 (process kind: image not isolated)", log)
    return SmokeResult(test.id, False, "failed", f"exit code {proc.returncode}", log)
