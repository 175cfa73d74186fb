"""Memory-store specifics: the LRU bound."""

from __future__ import annotations

from proxy.core.model import Entry, EntryKey
from proxy.store.memory import MemoryStore

RUN = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"


def entry(body: bytes) -> Entry:
    return Entry(200, "application/json", body, '"e"', 0.0, 60, 0)


async def test_least_recently_used_entry_is_evicted_past_the_bound() -> None:
    store = MemoryStore(max_entries=2)
    await store.save(EntryKey(RUN, "a"), entry(b"a"))
    await store.save(EntryKey(RUN, "b"), entry(b"b"))
    await store.lookup(EntryKey(RUN, "a"))  # a is now more recent than b
    await store.save(EntryKey(RUN, "c"), entry(b"c"))

    assert len(store) == 2
    assert (await store.lookup(EntryKey(RUN, "a"))).entry is not None
    assert (await store.lookup(EntryKey(RUN, "b"))).entry is None
    assert (await store.lookup(EntryKey(RUN, "c"))).entry is not None


async def test_expiry_follows_the_injected_clock() -> None:
    now = [100.0]
    store = MemoryStore(max_entries=10, clock=lambda: now[0])
    await store.save(EntryKey(RUN, "a"), entry(b"a"))

    now[0] = 159.9
    assert (await store.lookup(EntryKey(RUN, "a"))).entry is not None
    now[0] = 160.0
    assert (await store.lookup(EntryKey(RUN, "a"))).entry is None
    assert len(store) == 0


async def test_evicting_live_generations_starts_a_new_epoch() -> None:
    store = MemoryStore(max_entries=1)
    key = EntryKey(RUN, "a")
    before = await store.lookup(key)  # a fill reads the run's generation...
    await store.invalidate_run(RUN, keep_for=60)  # ...a write lands...
    for i in range(5):  # ...and enough other writes to overflow the generation records
        await store.invalidate_run(f"00000000-0000-4000-8000-00000000000{i}", keep_for=60)
    await store.save(key, Entry(200, "application/json", b"old", '"e"', 0.0, 60, 0,
                                before.generation))  # fmt: skip

    assert (await store.lookup(key)).entry is None


async def test_peek_answers_a_live_entry_without_an_await_and_nothing_else() -> None:
    now = [100.0]
    store = MemoryStore(max_entries=10, clock=lambda: now[0])
    await store.save(EntryKey(RUN, "a"), entry(b"a"))
    await store.save(EntryKey(RUN + "-other", "b"), entry(b"b"))

    live = store.peek(EntryKey(RUN, "a"))
    absent = store.peek(EntryKey(RUN, "z"))
    await store.invalidate_run(RUN, keep_for=60)
    invalidated = store.peek(EntryKey(RUN, "a"))
    now[0] = 160.0
    expired = store.peek(EntryKey(RUN + "-other", "b"))

    assert live == entry(b"a")
    assert absent is None
    assert invalidated is None
    assert expired is None
