"""Latency-target batching: how long a batch of n takes, how fast work arrives, what to do.

A model with `latency_target_ms` is batched without hand-tuned timers. Each worker keeps an
online model of its batch compute time, t(n) = a + b*n, fitted by exponentially weighted
least squares on its recent batches (as BentoML's adaptive batching does), and the batcher
keeps an exponentially decayed estimate of the arrival rate. From them:

- the batch size: the smallest n whose throughput n / t(n) keeps up with the arrival rate
  (with a margin), never more than the cap, the largest n whose t(n) is at most half the
  target (at saturation a request waits about one batch, then computes one);
- the batch worth waiting for: where the fixed cost a is at most a tenth of t(n), no bigger
  batch is much more efficient; a free worker waits for it only while the arrival rate can
  fill it and the oldest request can still finish within the target, else takes what there is
  (on a CPU, where a is small, that is nearly always at once: work-conserving);
- shedding: when the work already queued would make a new request miss the target, it is
  refused at once (429) instead of queueing to miss it, and making everyone behind it miss.
  Where exactly to refuse is steered by outcomes (ShedThreshold): the expectation is a mean,
  and how far the tail lies above it depends on the model, the device and the load;
- the backstop: a request whose turn comes too late to make the target even so is refused
  then (the batcher's _refuse_late) rather than computed to miss it.

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
#: A batch is sized to serve this multiple of the arrival rate: bigger ones only make the
#: requests in them wait for each other (and on a CPU a batch past its best size is slower
#: per sample, which a linear t(n) does not see).
KEEP_UP = 1.1
#: The share of answered requests allowed to miss the target: half of what a p99 target
#: allows, leaving the rest for the time the server cannot see (network, client).
MISS_SHARE = 0.005


class LatencyModel:
    """t(n) = a + b*n for one worker, from its recent (batch size, compute seconds)."""

    def __init__(self, decay: float = DECAY) -> None:
        self._decay = decay
        self._w = self._n = self._nn = self._t = self._nt = 0.0
        self._errors = 0.0  # decayed sum of |relative prediction error|, once fitted
        self._sizes: set[int] = set()
        self.fixed_s = 0.0  # a
        self.per_sample_s = 0.0  # b

    @property
    def fitted(self) -> bool:
        return len(self._sizes) >= 2 and self.fixed_s + self.per_sample_s > 0

    def observe(self, samples: int, seconds: float) -> None:
        d = self._decay
        if self.fitted:  # relative, and at most 100%: one stalled batch is not the norm
            predicted = self.predict(samples)
            error = min(1.0, abs(seconds - predicted) / predicted) if predicted > 0 else 0.0
        else:
            error = 0.0
        self._errors = d * self._errors + error
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

    @property
    def error_share(self) -> float:
        """The mean absolute error of predict() on recent batches, as a share of the
        prediction: how much longer than predicted a batch may well run on this device, under
        this load."""
        return self._errors / self._w if self._w else 0.0

    def pessimistic(self, samples: int) -> float:
        """A batch time that few batches exceed: the prediction plus 2.5 mean absolute
        errors (about two standard deviations, were the errors normal)."""
        return self.predict(samples) * (1 + 2.5 * self.error_share)

    def cap(self, budget_s: float, limit: int) -> int:
        """The largest batch (1..limit) whose predicted time fits `budget_s`."""
        if self.per_sample_s <= 0:
            return limit
        return max(1, min(limit, math.floor((budget_s - self.fixed_s) / self.per_sample_s)))

    def keeping_up(self, rate: float, limit: int) -> int:
        """The smallest batch (1..limit) whose throughput n / t(n) reaches `rate` samples/s;
        `limit` when none does."""
        if rate <= 0:
            return 1
        if math.isinf(rate):
            return limit
        room = 1 - rate * self.per_sample_s
        if room <= 0:
            return limit
        return max(1, min(limit, math.ceil(rate * self.fixed_s / room)))

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


class ShedThreshold:
    """Where to start refusing requests: at an expected latency of `share` x the target.

    A request expected right at the target misses it about half the time (arrivals are bursty,
    batch times vary), so the share must sit below 1 by as much as the tail lies above the
    mean, which depends on the model, the device and the load. It is steered by outcomes: an
    answered request that missed the target lowers it by `step`, each that made it raises it
    by step x p / (1 - p), so it settles where a share p of the answered requests miss (the
    stochastic approximation of a quantile; AIMD steers a rate the same way). Misses closer
    together than one target's length share a cause (a slow spell of the machine, a burst) and
    lower it once: counted one by one, one such spell would collapse the threshold and shed
    for a minute after it. It starts at `start` and stays within [`low`, `high`]. Above 1 it
    admits requests expected a little past the target: the expectation is uncertain, and the
    batcher refuses, when its turn comes, one that the queue has really made too late.
    """

    def __init__(
        self,
        *,
        start: float = 1.0,
        low: float = 0.5,
        high: float = 1.2,
        miss_share: float = MISS_SHARE,
        step: float = 0.05,
    ) -> None:
        self.share = start
        self._low, self._high = low, high
        self._down = step
        self._up = step * miss_share / (1 - miss_share)
        self._last_miss = -math.inf

    def observe(self, latency_s: float, target_s: float, now: float) -> None:
        if latency_s <= target_s:
            self.share = min(self._high, self.share + self._up)
        elif now - self._last_miss >= target_s:
            self._last_miss = now
            self.share = max(self._low, self.share - self._down)


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
    oldest_arrived: float,
    rate: float,
    now: float,
    workers: int = 1,
) -> Plan:
    """The decision of a free worker facing `queued` samples, the oldest of them at the
    server since `oldest_arrived`, with `rate` samples/s arriving for `workers` workers."""
    if not model.fitted:
        return Plan(limit)
    cap = model.cap(target_s / 2, limit)
    take = min(cap, model.keeping_up(KEEP_UP * rate / max(workers, 1), cap))
    # A backlog (a burst the decayed rate has not caught up with yet, a slow spell) is
    # drained at the rate that serves all of it before the oldest request's deadline, with
    # batches grown only as far as growing pays (past that, a bigger batch only delays the
    # answers in it); and a batch never runs past that deadline itself, where a smaller one
    # would not.
    left = oldest_arrived + target_s - now
    if queued > take:
        drain = queued / left if left > 0 else math.inf
        grown = model.keeping_up(drain / max(workers, 1), cap)
        take = max(take, min(grown, model.worth_waiting_for(cap)))
        if left > model.predict(1):  # else the oldest misses however small the batch
            take = min(take, model.cap(left, cap))
    goal = min(take, model.worth_waiting_for(cap))
    if queued >= goal or rate <= 0:
        return Plan(take)
    filled_at = now + (goal - queued) / rate
    latest_start = oldest_arrived + target_s - 2 * model.predict(goal)
    hold_until = min(filled_at, latest_start)
    return Plan(take, hold_until if hold_until > now else None)


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
