"""Batch formation: which queued requests of a shape group run together, and when.

Two ways to fill a batch of at most `limit` samples from a group, oldest first:
- FIFO: the oldest requests, in order, as many as fit;
- bounded padding (variable-length models): the oldest request and, of those queued behind
  it (a few batches' worth), the ones closest to it in length while padding stays within
  the plan's ratio (padding.choose_by_length).
And the one reason to wait instead: a queue delay, while the group is below the size worth
waiting for, at most `max_queue_delay_s` after its oldest request was queued.
"""

from __future__ import annotations

import asyncio

from app.batching.padding import PaddingPlan, choose_by_length
from app.batching.policy import BatchingPolicy
from app.batching.queue import Pending, RequestQueue, ShapeGroup


def take_batch(
    queue: RequestQueue, group: ShapeGroup, limit: int, padding: PaddingPlan | None
) -> list[Pending]:
    """Take one batch out of `group` (the requests leave the queue)."""
    if padding is not None:
        batch = _take_bounded_padding(queue, group, limit, padding.max_ratio)
    else:
        batch = _take_fifo(queue, group, limit)
    queue.changed()
    return batch


def _take_fifo(queue: RequestQueue, group: ShapeGroup, limit: int) -> list[Pending]:
    batch: list[Pending] = []
    taken = 0
    items = group.items
    while items:
        head = items[0]
        if not head.queued or (head.future.done() and queue.gone(head)):
            items.popleft()
            continue
        if batch and taken + head.samples > limit:
            break
        items.popleft()
        queue.leave(head)
        batch.append(head)
        taken += head.samples
    return batch


def _take_bounded_padding(
    queue: RequestQueue, group: ShapeGroup, limit: int, max_ratio: float
) -> list[Pending]:
    items = group.items
    window: list[Pending] = []
    while items and len(window) < 4 * max(limit, 1):
        candidate = items.popleft()
        if not queue.gone(candidate):
            window.append(candidate)
    chosen = choose_by_length([(p.length, p.samples) for p in window], limit, max_ratio)
    picked = set(chosen)
    batch = [window[i] for i in chosen]
    for pending in batch:
        queue.leave(pending)
    items.extendleft(reversed([p for i, p in enumerate(window) if i not in picked]))
    return batch


def take_limit(policy: BatchingPolicy, group: ShapeGroup, cap: int | None) -> int:
    """Samples the next batch of `group` may hold: a preferred size that can be formed,
    else the maximum; at most `cap` (latency-target batching) when given."""
    limit = policy.take_limit(group.samples) if policy.batches else 1
    return limit if cap is None else min(limit, cap)


def hold_until(policy: BatchingPolicy, group: ShapeGroup, draining: bool) -> float | None:
    """Loop time to wait until for a fuller batch, or None to take the batch now."""
    if draining or policy.max_queue_delay_s <= 0:
        return None
    if group.samples >= policy.target_batch_size:
        return None
    deadline = group.items[0].enqueued + policy.max_queue_delay_s
    return deadline if deadline > asyncio.get_running_loop().time() else None
