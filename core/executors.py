"""Where a behaviour study's cases run: in this process (``LocalExecutor``, the default).

An executor's ``run(jobs, ctx)`` yields ``(index, result)`` for each job (``core.behaviour.cases``) as
it finishes; cancellation through ``ctx`` stops it between jobs.
"""

from __future__ import annotations

from typing import Iterator

from core.behaviour.cases import run_case_job
from core.errors import CircuitDeskError
from core.jobs import JobContext


class LocalExecutor:
    """Every case in this process, in order (the model is loaded once)."""

    def run(self, jobs: list[dict], ctx: JobContext) -> Iterator[tuple[int, dict]]:
        n = len(jobs)
        for k, job in enumerate(jobs):
            ctx.check_cancelled()
            yield k, run_case_job(job, ctx.sub(k / n, (k + 1) / n, f"[{k + 1}/{n}] {job['case']['name']}"))


def executor_for(settings) -> LocalExecutor:
    if settings.executor == "local":
        return LocalExecutor()
    raise CircuitDeskError(f"Unknown executor {settings.executor!r}.")
