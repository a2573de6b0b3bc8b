"""The RQ worker of `rgbt-al worker`: jobs run in the worker's own process, each held on a short lease."""

from __future__ import annotations

import logging
import threading
from typing import Any

from rq import SimpleWorker
from rq.worker import WorkerStatus

log = logging.getLogger(__name__)


class LeasedWorker(SimpleWorker):
    """The RQ worker of `rgbt-al worker`: runs jobs in its own process, holding each on a short lease.

    RQ's SimpleWorker runs a job in the worker process itself (models stay loaded between jobs, CUDA never
    crosses a fork) but, having no monitoring parent, claims the job for its whole timeout (hours): a worker
    killed mid-job left it "started" that long. Here a heartbeat thread renews the claim every quarter of
    ``lease_seconds``; once a dead worker's lease ran out, RQ's registry maintenance (any worker's, every
    ``lease_seconds`` at most, or any `rgbt-al jobs` / ``/jobs`` listing) retries the job while it has
    retries left and reports it failed (``AbandonedJobError``) after.
    """

    def __init__(self, *args: Any, lease_seconds: int = 60, **kwargs: Any) -> None:
        self.lease_seconds = max(2, int(lease_seconds))
        kwargs.setdefault("maintenance_interval", self.lease_seconds)
        # An idle worker blocks on the queue for (worker_ttl - 15) s between maintenance checks.
        kwargs.setdefault("worker_ttl", self.lease_seconds + 15)
        super().__init__(*args, **kwargs)

    def get_heartbeat_ttl(self, job: Any, working_time: float = 0.0) -> int:
        return self.lease_seconds

    def execute_job(self, job: Any, queue: Any) -> None:
        execution = self.prepare_execution(job)
        done = threading.Event()
        renewer = threading.Thread(
            target=self._renew_lease, args=(job, execution, done), name="rq-lease", daemon=True
        )
        renewer.start()
        try:
            self.perform_job(job, queue, execution)
        finally:
            done.set()
            renewer.join()
        self.set_state(WorkerStatus.IDLE)

    def _renew_lease(self, job: Any, execution: Any, done: threading.Event) -> None:
        while not done.wait(self.lease_seconds / 4):
            try:
                self.maintain_heartbeats(job, execution)
            except Exception as error:  # Redis away for a moment: the next beat may get through
                log.warning("job %s: lease not renewed: %s", job.id, error)
