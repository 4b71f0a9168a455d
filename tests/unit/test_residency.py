"""The memory budget's rules on given models: parsing the setting, which resident models
go to make room (those asked for least per byte first, the least recently used among equals,
never pinned or in use), when a load waits for room, the refusals' wording, and the costs
kept between loads."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, cast

import pytest

from app.errors import ModelLoadError, UnavailableError, retry_after_s
from app.repository import LoadedVersion
from app.repository.budget import parse_memory_budget, shown_bytes
from app.repository.residency import (
    ESTIMATE_PER_FILE_BYTE,
    CostBook,
    MemoryBudgetFullError,
    Room,
    choose_evictions,
    over_budget,
)
from app.repository.state import Demand, ModelEntry, ModelState

MiB = 1 << 20


class Held:
    """What eviction reads of a loaded version: its measured cost, users and last use."""

    def __init__(self, memory_bytes: int, last_used: float, users: int = 0) -> None:
        self.memory_bytes, self.last_used, self.users = memory_bytes, last_used, users


def resident(name: str, mib: int, last_used: float, *, users: int = 0, **fields: Any) -> ModelEntry:
    version = cast(LoadedVersion, Held(mib * MiB, last_used, users))
    return ModelEntry(name, Path(name), ModelState.READY, versions={1: version}, **fields)


def cold(name: str, mib: int) -> ModelEntry:
    return ModelEntry(name, Path(name), ModelState.UNAVAILABLE, expected_bytes=mib * MiB)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("8GiB", 8 << 30),
        ("512MB", 512_000_000),
        ("512 MiB", 512 * MiB),
        ("1073741824", 1 << 30),
        ("1.5G", 1_500_000_000),
        ("0.5", 500),
        ("50%", 500),
        ("100%", 1000),
    ],
)
def test_budget_is_bytes_or_a_share_of_the_limit(text: str, expected: int) -> None:
    assert parse_memory_budget(text, available=1000) == expected


@pytest.mark.parametrize("text", ["", "lots", "8 parsecs", "0", "0%", "150%", "1.5%x", "-1GB"])
def test_a_budget_that_says_nothing_usable_is_refused_with_the_forms(text: str) -> None:
    with pytest.raises(ModelLoadError, match="budget"):
        parse_memory_budget(text, available=1000)


def test_a_share_with_no_given_limit_is_of_this_process_limit() -> None:
    assert 0 < parse_memory_budget("50%") < parse_memory_budget("100%")


def test_sizes_read_as_a_person_would() -> None:
    assert [shown_bytes(n) for n in (512, 2048, 3 * MiB, 25 * MiB, 3 << 30)] == [
        "512 B", "2.0 KiB", "3.0 MiB", "25 MiB", "3.0 GiB",
    ]  # fmt: skip


def test_room_is_made_least_recently_used_first_and_no_more_than_needed() -> None:
    old, middle, new = (
        resident("old", 40, 1.0),
        resident("middle", 40, 2.0),
        resident("new", 40, 3.0),
    )
    chosen = choose_evictions(
        cold("next", 50), budget=150 * MiB, reserved=0, resident=[new, old, middle]
    )
    assert [e.name for e in chosen] == ["old"]


def test_nothing_goes_while_the_load_fits() -> None:
    entries = [resident("a", 40, 1.0), resident("b", 40, 2.0)]
    assert choose_evictions(cold("c", 20), budget=100 * MiB, reserved=0, resident=entries) == []


def test_pinned_and_in_use_models_stay_and_the_refusal_names_them() -> None:
    pinned = resident("pinned", 40, 1.0, pinned=True)
    busy = resident("busy", 40, 2.0, users=1)
    idle = resident("idle", 10, 3.0)
    with pytest.raises(MemoryBudgetFullError) as refused:
        choose_evictions(
            cold("next", 30), budget=100 * MiB, reserved=0, resident=[pinned, busy, idle]
        )
    message = refused.value.message
    assert "'next' needs 30 MiB" in message and "budget of 100 MiB" in message
    assert "'pinned' 40 MiB pinned" in message and "'busy' 40 MiB in use" in message
    assert retry_after_s(refused.value) == 1


def test_a_model_with_a_load_in_progress_is_in_use() -> None:
    loading = resident("loading", 40, 1.0)
    loading.loading = cast(asyncio.Task[None], object())
    with pytest.raises(MemoryBudgetFullError):
        choose_evictions(cold("next", 70), budget=100 * MiB, reserved=0, resident=[loading])


def test_loads_in_progress_hold_their_room() -> None:
    idle = resident("idle", 40, 1.0)
    assert choose_evictions(cold("next", 30), budget=100 * MiB, reserved=0, resident=[idle]) == []
    chosen = choose_evictions(
        cold("next", 30), budget=100 * MiB, reserved=40 * MiB, resident=[idle]
    )
    assert chosen == [idle]


def test_a_model_larger_than_the_whole_budget_says_both_sizes() -> None:
    with pytest.raises(
        UnavailableError, match=r"needs 200 MiB, more than the whole memory budget of 100 MiB"
    ):
        choose_evictions(cold("huge", 200), budget=100 * MiB, reserved=0, resident=[])


def test_a_reload_counts_the_versions_it_replaces_until_they_go() -> None:
    serving = resident("model", 60, 5.0)
    serving.expected_bytes = 60 * MiB
    idle = resident("idle", 30, 1.0)
    chosen = choose_evictions(serving, budget=140 * MiB, reserved=0, resident=[serving, idle])
    assert chosen == [idle]


def test_after_a_load_measured_more_the_least_recent_idle_go_never_the_new_one() -> None:
    new = resident("new", 70, 9.0)
    older, busy, pinned = (
        resident("older", 20, 1.0),
        resident("busy", 20, 0.5, users=2),
        resident("pinned", 20, 0.1, pinned=True),
    )
    chosen = over_budget(
        budget=100 * MiB, reserved=0, resident=[new, older, busy, pinned], keep=new, now=0.0
    )
    assert chosen == [older]


def test_costs_are_remembered_per_version_and_unknown_ones_estimated(tmp_path: Path) -> None:
    version = tmp_path / "model" / "1"
    version.mkdir(parents=True)
    (version / "model.onnx").write_bytes(b"x" * 1000)
    book = CostBook(tmp_path / "cache")
    assert book.read(version) is None
    assert book.expected([version]) == ESTIMATE_PER_FILE_BYTE * 1000 + 1000  # and its files
    book.write(version, 12345)
    assert book.read(version) == 12345 and book.expected([version]) == 12345 + 1000
    (tmp_path / "model" / "config.toml").write_text("max_batch_size = 4\n")
    assert book.read(version) is None  # another config: measured again


def asked(entry: ModelEntry, times: int, at: float = 0.0) -> ModelEntry:
    for _ in range(times):
        entry.demand.note(at)
    return entry


def test_demand_halves_each_minute_and_outlives_the_model() -> None:
    demand = Demand()
    for _ in range(4):
        demand.note(0.0)
    assert demand.level(0.0) == 4 and demand.level(60.0) == pytest.approx(2.0)
    demand.note(60.0)
    assert demand.level(60.0) == pytest.approx(3.0)


def test_a_tiny_popular_model_stays_while_a_large_rarely_asked_one_goes() -> None:
    tiny = asked(resident("tiny", 2, 1.0), 100)  # 50 requests per MiB
    large = asked(resident("large", 60, 9.0), 30)  # 0.5 per MiB, though used last
    chosen = choose_evictions(
        cold("next", 40), budget=100 * MiB, reserved=0, resident=[tiny, large]
    )
    assert chosen == [large]


def test_a_patient_load_waits_for_a_less_popular_model_in_use() -> None:
    popular = asked(resident("popular", 10, 1.0), 100)
    busy = asked(resident("busy", 60, 2.0, users=1), 1)
    entries = [popular, busy]
    with pytest.raises(MemoryBudgetFullError) as refused:
        choose_evictions(
            cold("next", 50), budget=100 * MiB, reserved=0, resident=entries, patient=True
        )
    assert refused.value.requests_hold_room  # the load may wait for 'busy' to be let go
    # Not patient, the popular idle one would go (and the load would still not fit).
    with pytest.raises(MemoryBudgetFullError):
        choose_evictions(cold("next", 50), budget=100 * MiB, reserved=0, resident=entries)


def test_room_waits_for_requests_to_let_go_then_unloads_what_they_held() -> None:
    asyncio.run(_room_waits())


async def _room_waits() -> None:
    popular = asked(resident("popular", 10, 1.0), 100)
    busy = asked(resident("busy", 60, 2.0, users=1), 1)
    room = Room(100 * MiB, wait_s=30.0)
    entry = cold("next", 50)
    with pytest.raises(MemoryBudgetFullError) as refused:
        room.victims(entry, [popular, busy], now=0.0, patient=True)
    loop = asyncio.get_running_loop()
    waited = asyncio.ensure_future(room.wait(refused.value, give_up=loop.time() + 30.0))
    await asyncio.sleep(0)
    assert not waited.done()
    cast(Held, busy.versions[1]).users = 0
    room.changed()  # as LoadedVersion.release tells it
    await asyncio.wait_for(waited, 5.0)
    assert room.victims(entry, [popular, busy], now=0.0, patient=True) == [busy]


def test_room_refuses_at_once_when_waiting_cannot_help() -> None:
    asyncio.run(_room_refuses())


async def _room_refuses() -> None:
    pinned = resident("pinned", 80, 1.0, pinned=True)
    room = Room(100 * MiB, wait_s=30.0)
    with pytest.raises(MemoryBudgetFullError) as refused:
        room.victims(cold("next", 50), [pinned], now=0.0, patient=True)
    assert not refused.value.requests_hold_room
    with pytest.raises(MemoryBudgetFullError):
        await room.wait(refused.value, give_up=asyncio.get_running_loop().time() + 30.0)


def test_a_load_among_requests_counts_the_cost_a_load_alone_measured(tmp_path: Path) -> None:
    version = tmp_path / "model" / "1"
    version.mkdir(parents=True)
    (version / "model.onnx").write_bytes(b"x" * 1000)
    book = CostBook(tmp_path / "cache")
    assert book.keep(version, 5000, alone=False, overshoot=None) == 5000  # nothing better
    assert book.keep(version, 9000, alone=False, overshoot=None) == 5000
    assert book.keep(version, 4000, alone=True, overshoot=300) == 4000  # replaces a noisy one
    assert book.keep(version, 12000, alone=False, overshoot=None) == 4000
    assert book.read(version) == 4000
    assert book.expected([version]) == 4000 + 300  # its measured overshoot, not its files
