"""Overload control: a request is admitted only when its images can finish within the latency budget.

Per worker, every model's admitted images (waiting, decoding or running) are counted, and each model has an
estimated cost in worker seconds per image. The estimate comes from the batches themselves: a batch's
images have been ready since the earliest of them was queued; from then, or from the end of the batch
before if that came later, to the end of this one is what the whole worker (decoding, HTTP, inference, the
other models' batches) took for them. Under load that is the worker's true pace; when idle it is one
batch's own time. A request
whose images would finish later than the budget, or push a model past its queue limit, is refused at once
with 503 and a `Retry-After` of the time the backlog needs: no decoding, no queueing, no waiting.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from service.errors import Overloaded

_ALPHA = 0.2  # weight of a new sample in the moving average: a few batches move the estimate
# The backlog admitted may hold this share of the budget: the rest absorbs the estimate's error and the spread of
# service times, so that the budget bounds accepted requests' p99, not their median.
BACKLOG_SHARE = 0.5


@dataclass
class _ModelLoad:
    pending: int = 0
    cost_s: float = 0.0  # estimated worker seconds per image; 0 until a batch has run


class Admission:
    def __init__(self, *, max_queue_images: int, latency_budget_s: float) -> None:
        self.max_queue_images = max_queue_images
        self.latency_budget_s = latency_budget_s
        self._models: dict[str, _ModelLoad] = {}
        self._last_batch_end = 0.0

    def _load(self, key: str) -> _ModelLoad:
        load = self._models.get(key)
        if load is None:
            load = self._models[key] = _ModelLoad()
        return load

    def backlog_s(self) -> float:
        """Estimated seconds until every admitted image of every model is done (one inference thread)."""
        return sum(m.pending * m.cost_s for m in self._models.values())

    def admit(self, key: str, images: int) -> None:
        """Count `images` in for model `key`, or raise Overloaded without counting anything."""
        load = self._load(key)
        if load.pending + images > self.max_queue_images:
            raise self._refusal(
                f"model {key} has {load.pending} images queued; the limit is {self.max_queue_images} "
                "(OPTIC_MAX_QUEUE_IMAGES)"
            )
        backlog = self.backlog_s()
        finish_s = backlog + images * load.cost_s
        if backlog > 0 and finish_s > self.latency_budget_s * BACKLOG_SHARE:
            raise self._refusal(
                f"the images queued would keep this request waiting about {finish_s * 1000:.0f} ms, more than "
                f"this worker admits within its latency budget of {self.latency_budget_s * 1000:.0f} ms "
                "(OPTIC_LATENCY_BUDGET_MS)",
                backlog,
            )
        load.pending += images

    def admit_unchecked(self, key: str, images: int) -> None:
        """Evaluation's images: never refused half-way through a data set, but counted, so live requests
        see the backlog they make."""
        self._load(key).pending += images

    def release(self, key: str, images: int) -> None:
        load = self._load(key)
        load.pending = max(0, load.pending - images)

    def observe_batch(self, key: str, size: int, ready: float, ended: float) -> None:
        """A batch of `size` images of model `key`, queued (ready to run) at `ready`, ended at `ended`."""
        load = self._load(key)
        sample = (ended - max(self._last_batch_end, ready)) / size
        if load.cost_s:  # one stall (a page fault, a collection) moves the estimate, but not 100-fold
            sample = min(sample, 4 * load.cost_s)
        load.cost_s = sample if load.cost_s == 0.0 else (1 - _ALPHA) * load.cost_s + _ALPHA * sample
        self._last_batch_end = ended

    def pending(self, key: str) -> int:
        return self._load(key).pending

    def _refusal(self, message: str, backlog_s: float | None = None) -> Overloaded:
        wait = self.backlog_s() if backlog_s is None else backlog_s
        retry_after = min(60, max(1, math.ceil(wait)))
        return Overloaded(f"overloaded: {message}; retry in {retry_after} s", headers={"retry-after": str(retry_after)})
