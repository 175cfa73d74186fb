"""The cuts applied to lookups, and kept in step with other replicas' through the store."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from proxy.cache.ports import KeptCuts
from proxy.core.cuts import Cuts
from proxy.core.model import Entry, EntryKey
from proxy.ops.metrics import Metrics
from proxy.store.cutting import CutListener, CuttingStore
from proxy.store.guard import GuardedStore
from proxy.store.memory import MemoryStore

RUN = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
NOW = 1.8e9
WRITER = EntryKey(RUN, "run:writer", "writer")


class KeepingStore(MemoryStore):
    """A memory store that keeps cuts as Redis would, for the read back."""

    def __init__(self) -> None:
        super().__init__(max_entries=10)
        self.kept = KeptCuts(0.0, {})

    async def read_cuts(self) -> KeptCuts:
        return self.kept


async def parts() -> tuple[KeepingStore, CuttingStore, CutListener, list[int]]:
    inner, cuts, forgotten = KeepingStore(), Cuts(active_ttl=2), []
    cutting = CuttingStore(GuardedStore(inner, Metrics(CollectorRegistry())), cuts, lambda: NOW)
    listener = CutListener(inner, cutting, cuts, lambda: forgotten.append(1))
    await cutting.save(WRITER, Entry(200, "application/json", b"{}", '"e"', NOW - 5, 60, 600))
    return inner, cutting, listener, forgotten


async def test_a_cut_heard_ages_the_entries_and_detaches_fills() -> None:
    _, cutting, listener, forgotten = await parts()

    listener.heard("writer", NOW - 1)

    assert (await cutting.lookup(WRITER)).entry is None
    assert forgotten == [1]


async def test_while_announcements_may_have_been_missed_nothing_is_answered_from_the_store() -> (
    None
):
    inner, cutting, listener, _ = await parts()
    listener.lost()
    missed_meanwhile = (await cutting.lookup(WRITER)).entry
    inner.kept = KeptCuts(0.0, {"writer": NOW - 1})  # a cut announced while it was away

    await listener.catch_up()

    assert missed_meanwhile is None
    assert cutting.in_step
    assert (await cutting.lookup(WRITER)).entry is None  # the cut read back


async def test_a_catch_up_overtaken_by_another_loss_leaves_the_store_out_of_step() -> None:
    _, cutting, listener, _ = await parts()
    listener.lost()

    class LostWhileReading(KeepingStore):
        async def read_cuts(self) -> KeptCuts:
            listener.lost()
            return KeptCuts(0.0, {})

    listener._store = LostWhileReading()
    await listener.catch_up()

    assert not cutting.in_step


async def test_what_the_store_folded_reads_back_as_expired() -> None:
    inner, cutting, listener, _ = await parts()
    listener.lost()
    inner.kept = KeptCuts(NOW - 1, {})

    await listener.catch_up()

    assert (await cutting.lookup(WRITER)).entry is None


async def test_a_peeked_entry_is_cut_as_a_looked_up_one() -> None:
    _, cutting, listener, _ = await parts()
    before = cutting.peek(WRITER)

    listener.heard("writer", NOW - 1)
    after_cut = cutting.peek(WRITER)
    listener.lost()
    out_of_step = cutting.peek(WRITER)

    assert before is not None
    assert after_cut is None
    assert out_of_step is None
