"""The hit reply's pre-built parts spell exactly what the general builders would."""

from __future__ import annotations

import dataclasses

from hypothesis import given
from hypothesis import strategies as st

from proxy.cache import replies
from proxy.core.model import Entry, Freshness, Judgement, Reason
from proxy.core.policy import cache_status


def built_the_long_way(entry: Entry, judgement: Judgement) -> list[tuple[bytes, bytes]]:
    headers = []
    if entry.content_type:
        headers.append((b"content-type", entry.content_type.encode("latin-1")))
    if entry.status == 200:
        headers.append((b"etag", entry.etag.encode("ascii")))
    detail = Reason.NEGATIVE if entry.status != 200 else None
    return [
        *headers,
        (b"x-cache", b"HIT"),
        (b"age", b"%d" % judgement.age),
        (b"cache-status", cache_status(hit=True, ttl=judgement.ttl, detail=detail)),
    ]


@given(
    status=st.sampled_from([200, 404]),
    content_type=st.sampled_from(["", "application/json", "application/json; charset=utf-8"]),
    age=st.floats(min_value=0, max_value=1e6),
    ttl=st.floats(min_value=1e-6, max_value=1e6),
)
def test_a_hit_carries_the_headers_the_general_builders_spell(
    status: int, content_type: str, age: float, ttl: float
) -> None:
    entry = Entry(status, content_type, b"{}", '"e-1"', 1.8e9, 60, 600)
    judgement = Judgement(Freshness.FRESH, ttl, age)

    reply = replies.hit(entry, judgement)

    assert reply.headers == built_the_long_way(entry, judgement)
    assert reply.cache == ("hit" if status == 200 else "negative_hit")


def test_an_entry_changed_by_a_cut_has_its_own_head() -> None:
    entry = Entry(200, "application/json", b"{}", '"e-1"', 1.8e9, 60, 600)

    shortened = dataclasses.replace(entry, fresh_for=1.0, stale_for=0)
    renamed = dataclasses.replace(entry, etag='"e-2"')

    assert shortened.head == entry.head
    assert (b"etag", b'"e-2"') in renamed.head
    assert shortened == dataclasses.replace(shortened)  # the head takes no part in equality
