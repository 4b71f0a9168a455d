"""Latency-target batching: how long a batch of n takes, how fast work arrives, what to do.

A model with `latency_target_ms` is batched without hand-tuned timers. Each worker keeps an
online model of its batch compute time, t(n) = a + b*n, fitted by exponentially weighted
least squares on its recent batches (as BentoML's adaptive batching does), and the batcher
keeps an exponentially decayed estimate of the arrival rate. From them:

- the batch cap: the largest n whose t(n) is at most half the target (at saturation a request
  waits about one batch, then computes one), so a batch never spends the budget by itself;
- the batch worth waiting for: where the fixed cost a is at most a tenth of t(n), no bigger
  batch is much more efficient; a free worker waits for it only while the arrival rate can
  fill it and the oldest request can still finish within the target, else takes what there is
  (on a CPU, where a is small, that is nearly always at once: work-conserving);
- shedding: when the work already queued would make a new request miss the target, it is
  refused at once (429) instead of queueing to miss it, and making everyone behind it miss.

Until a worker has timed batches of two different sizes the model is not fitted, and the
batcher simply works as without a target (work-conserving, no shedding).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: Weight kept by older observations at each new batch (memory of about 20 batches).
DECAY = 0.95
#: A batch is "big enough" once its fixed cost is at most this share of its compute time.
FIXED_COST_SHARE = 0.1
#: Shed a request whose expected latency exceeds this share of the target: arrivals are
#: bursty and batch times vary, so a request expected right at the target would miss it
#: about half the time, and the target is for the tail.
SHED_AT = 0.8


class LatencyModel:
    """t(n) = a + b*n for one worker, from its recent (batch size, compute seconds)."""

    def __init__(self, decay: float = DECAY) -> None:
        self._decay = decay
        self._w = self._n = self._nn = self._t = self._nt = 0.0
        self._sizes: set[int] = set()
        self.fixed_s = 0.0  # a
        self.per_sample_s = 0.0  # b

    @property
    def fitted(self) -> bool:
        return len(self._sizes) >= 2 and self.fixed_s + self.per_sample_s > 0

    def observe(self, samples: int, seconds: float) -> None:
        d = self._decay
        self._w = d * self._w + 1.0
        self._n = d * self._n + samples
        self._nn = d * self._nn + samples * samples
        self._t = d * self._t + seconds
        self._nt = d * self._nt + samples * seconds
        if len(self._sizes) < 2:
            self._sizes.add(samples)
        self._fit()

    def _fit(self) -> None:
        spread = self._w * self._nn - self._n * self._n
        if spread <= 1e-9 * max(self._w * self._nn, 1.0):  # one batch size only: t = b*n
            self.fixed_s, self.per_sample_s = 0.0, self._t / self._n if self._n else 0.0
            return
        b = (self._w * self._nt - self._n * self._t) / spread
        a = (self._t - b * self._n) / self._w
        if b < 0:  # bigger batches timed faster (noise): no per-sample cost to speak of
            a, b = self._t / self._w, 0.0
        elif a < 0:  # no fixed cost to speak of
            a, b = 0.0, self._nt / self._nn
        self.fixed_s, self.per_sample_s = a, b

    def predict(self, samples: int) -> float:
        return self.fixed_s + self.per_sample_s * samples

    def cap(self, budget_s: float, limit: int) -> int:
        """The largest batch (1..limit) whose predicted time fits `budget_s`."""
        if self.per_sample_s <= 0:
            return limit
        return max(1, min(limit, math.floor((budget_s - self.fixed_s) / self.per_sample_s)))

    def worth_waiting_for(self, limit: int) -> int:
        """The batch size past which waiting buys little: a <= FIXED_COST_SHARE * t(n)."""
        if self.per_sample_s <= 0:
            return limit
        share = FIXED_COST_SHARE
        needed = self.fixed_s * (1 - share) / (share * self.per_sample_s)
        return max(1, min(limit, math.ceil(needed)))


class ArrivalRate:
    """Samples per second arriving, exponentially decayed with time constant `tau_s`."""

    def __init__(self, tau_s: float = 1.0) -> None:
        self._tau = tau_s
        self._rate = 0.0
        self._at: float | None = None

    def add(self, samples: int, now: float) -> None:
        self._rate = self.at(now) + samples / self._tau
        self._at = now

    def at(self, now: float) -> float:
        if self._at is None:
            return 0.0
        return self._rate * math.exp(-(now - self._at) / self._tau)


@dataclass(frozen=True, slots=True)
class Plan:
    """What a free worker should do: take up to `take` samples now, or wait until `hold`."""

    take: int
    hold_until: float | None = None


def plan_batch(
    model: LatencyModel,
    target_s: float,
    limit: int,
    queued: int,
    oldest_enqueued: float,
    rate: float,
    now: float,
) -> Plan:
    """The decision of a free worker facing `queued` samples, the oldest since
    `oldest_enqueued`, with `rate` samples/s arriving."""
    cap = model.cap(target_s / 2, limit)
    if not model.fitted or queued >= cap:
        return Plan(cap if model.fitted else limit)
    goal = min(cap, model.worth_waiting_for(cap))
    if queued >= goal or rate <= 0:
        return Plan(cap)
    filled_at = now + (goal - queued) / rate
    latest_start = oldest_enqueued + target_s - 2 * model.predict(goal)
    hold_until = min(filled_at, latest_start)
    return Plan(cap, hold_until if hold_until > now else None)


def expected_latency(
    models: list[LatencyModel],
    target_s: float,
    limit: int,
    queued: int,
    incoming: int,
    busy_s: float = 0.0,
) -> float | None:
    """About how long a request of `incoming` samples would take if queued now behind
    `queued` samples, all workers sharing the queue, the first of them free in `busy_s`;
    None while no worker is fitted."""
    fitted = [m for m in models if m.fitted]
    if not fitted:
        return None
    capacity = 0.0  # samples per second, every fitted worker running full batches
    for m in fitted:
        n = m.cap(target_s / 2, limit)
        capacity += n / m.predict(n)
    own = min(fitted, key=lambda m: m.predict(1))
    own_batch = own.predict(min(queued + incoming, own.cap(target_s / 2, limit)))
    return busy_s + queued / capacity + own_batch
