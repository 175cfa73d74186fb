"""Properties of the pure core that examples alone cannot pin down, checked with hypothesis.

Scopes: no two credential header pairs share one (SPEC section 3), under adversarial pairs built
to collide a naive encoding. Run ids: every Postgres spelling of a UUID is one key, and nothing
else is a run id (SPEC section 2). Paths: `check_path` accepts exactly what SPEC section 11
accepts, judged by a reference predicate written from the SPEC text, not from the code; any
spelling of the own surface that a normaliser would read back is caught. Queries: two orders
of the same parameters share an entry only when Lunary reads them alike.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from urllib.parse import parse_qsl, quote

from hypothesis import example, given
from hypothesis import strategies as st

from proxy.core.model import CachedRoute, RouteKind
from proxy.core.paths import check_path, is_own_surface, match_cached_route, normalise_query
from proxy.core.runs import canonical_run_id
from proxy.core.scope import ANONYMOUS, ScopeHasher
from tests.spec_paths import spec_accepts

SECRET = b"property-scope-secret"
hasher = ScopeHasher(SECRET)

Pair = tuple[bytes | None, bytes | None]

# -- scopes ---------------------------------------------------------------------------------

header_value = st.one_of(st.none(), st.binary(max_size=40))
# bytes a framing scheme might use as separators or length prefixes
framing_bytes = st.sampled_from(
    [b"\x00", b"\x01", b"\n", b"\r\n", b":", b" ", b"\x00\x00\x00\x00", b"\x00\x00\x00\x01"]
)


def _joined(value: bytes | None) -> bytes:
    return value or b""


@st.composite
def colliding_candidates(draw: st.DrawFn) -> tuple[Pair, Pair]:
    """A pair and a second pair crafted to feed a naive encoding the same bytes."""
    auth, key = draw(header_value), draw(header_value)
    how = draw(
        st.sampled_from(["same", "swap", "move", "absent-empty", "affix", "framed", "random"])
    )
    if how == "same":
        return (auth, key), (auth, key)
    if how == "swap":
        return (auth, key), (key, auth)
    if how == "move":
        # the same concatenated bytes, split at another point between the two headers
        whole = _joined(auth) + _joined(key)
        cut = draw(st.integers(0, len(whole)))
        other: Pair = (
            whole[:cut] if cut or draw(st.booleans()) else None,
            whole[cut:] if cut < len(whole) or draw(st.booleans()) else None,
        )
        return (auth, key), other
    if how == "absent-empty":
        flip = {None: b"", b"": None}
        if draw(st.booleans()):
            return (auth, key), (flip.get(auth, auth), key)
        return (auth, key), (auth, flip.get(key, key))
    if how == "affix":
        extra = draw(st.one_of(framing_bytes, st.binary(min_size=1, max_size=8)))
        base = _joined(auth)
        changed = extra + base if draw(st.booleans()) else base + extra
        return (auth, key), (changed, key) if draw(st.booleans()) else (key, changed)
    if how == "framed":
        # one header holding what a separator- or length-framed encoding of both would be
        sep = draw(framing_bytes)
        packed = _joined(auth) + sep + _joined(key)
        if draw(st.booleans()):
            packed = len(_joined(auth)).to_bytes(4, "big") + packed
        return (auth, key), (packed, None) if draw(st.booleans()) else (None, packed)
    return (auth, key), (draw(header_value), draw(header_value))


@given(colliding_candidates())
@example(((b"ab", b"c"), (b"a", b"bc")))
@example(((b"", None), (None, b"")))
@example(((b"", None), (None, None)))
@example(((b"k", b""), (b"k", None)))
@example(((b"\x01\x00\x00\x00\x01k", None), (b"k", None)))
def test_distinct_credential_pairs_never_share_a_scope(pairs: tuple[Pair, Pair]) -> None:
    first, second = pairs

    assert (hasher.scope(*first) == hasher.scope(*second)) == (first == second)


@given(header_value, header_value)
def test_a_pair_always_maps_to_the_same_scope_and_anon_only_without_credentials(
    auth: bytes | None, key: bytes | None
) -> None:
    scope = hasher.scope(auth, key)

    assert scope == hasher.scope(auth, key) == ScopeHasher(SECRET).scope(auth, key)
    assert (scope == ANONYMOUS) == (auth is None and key is None)
    if scope != ANONYMOUS:
        assert scope != ScopeHasher(SECRET + b"-other").scope(auth, key)


# -- run ids --------------------------------------------------------------------------------


def postgres_uuid_in(text: str) -> str | None:
    """Postgres' `string_to_uuid` (src/backend/utils/adt/uuid.c) ported line by line.

    An optional `{`, then 16 bytes as two hex digits each, a `-` allowed after every second byte
    but the last, then `}` if there was a `{`, then the end. The canonical form is uuid.UUID's.
    """
    src, braces = text, False
    if src.startswith("{"):
        src, braces = src[1:], True
    digits = ""
    for i in range(16):
        pair = src[:2]
        if len(pair) < 2 or any(c not in "0123456789abcdefABCDEF" for c in pair):
            return None
        digits += pair
        src = src[2:]
        if src.startswith("-") and i % 2 == 1 and i < 15:
            src = src[1:]
    if braces:
        if not src.startswith("}"):
            return None
        src = src[1:]
    if src:
        return None
    return str(uuid.UUID(hex=digits))


@st.composite
def uuid_spellings(draw: st.DrawFn) -> tuple[uuid.UUID, str]:
    """A UUID and one spelling Postgres accepts for it: any case, braces, hyphens after any
    group of four hex digits but the last."""
    run = draw(st.uuids())
    upper = draw(st.lists(st.booleans(), min_size=32, max_size=32))
    digits = "".join(c.upper() if up else c for c, up in zip(run.hex, upper, strict=True))
    hyphens = draw(st.sets(st.sampled_from(range(4, 32, 4))))
    text = "".join(digits[i : i + 4] + ("-" if i + 4 in hyphens else "") for i in range(0, 32, 4))
    return run, "{" + text + "}" if draw(st.booleans()) else text


@given(uuid_spellings())
@example((uuid.UUID(int=0), "00000000000000000000000000000000"))
@example(
    (uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"), "{A0EE-BC99-9C0B-4EF8-BB6D-6BB9-BD38-0A11}")
)
def test_every_postgres_spelling_is_one_canonical_id(spelled: tuple[uuid.UUID, str]) -> None:
    run, spelling = spelled

    assert canonical_run_id(spelling) == str(run) == str(uuid.UUID(spelling))
    assert postgres_uuid_in(spelling) == str(run)  # the reference agrees it is a spelling


def _percent(char: str, upper: bool) -> str:
    escaped = f"%{ord(char):02x}"
    return escaped.upper() if upper else escaped


@given(uuid_spellings(), st.data())
def test_every_spelling_in_a_path_matches_one_cached_route(
    spelled: tuple[uuid.UUID, str], data: st.DataObject
) -> None:
    run, spelling = spelled
    # braces may come raw or as %7B/%7b...%7D/%7d; any other character may be percent-encoded
    # too (Lunary's router decodes the id once before Postgres reads it)
    encoded = "".join(
        _percent(c, data.draw(st.booleans()))
        if (c in "{}" and data.draw(st.booleans())) or data.draw(st.integers(0, 9)) == 0
        else c
        for c in spelling
    )
    related = data.draw(st.booleans())
    path = f"/v1/runs/{encoded}" + ("/related" if related else "")

    kind = RouteKind.RELATED if related else RouteKind.RUN
    assert match_cached_route(path.encode()) == CachedRoute(kind, str(run))
    assert check_path(path.encode()) is None


# digits and letters that are hex to Unicode-aware matchers but not to Postgres: Arabic-Indic
# three, full-width A and full-width zero
LOOKALIKES = "\u0663\uff21\uff10"
near_uuid_text = st.text(
    alphabet=st.sampled_from(list("0123456789abcdefABCDEF-{}gG xX\n\t" + LOOKALIKES)), max_size=44
)


@st.composite
def near_miss_spellings(draw: st.DrawFn) -> str:
    """A valid spelling with one edit: the strings most likely to fool a loose UUID match."""
    _, spelling = draw(uuid_spellings())
    at = draw(st.integers(0, len(spelling)))
    edit = draw(st.sampled_from(["insert", "delete", "replace"]))
    char = draw(st.sampled_from(list("-{}0aFg \n" + LOOKALIKES)))
    if edit == "insert":
        return spelling[:at] + char + spelling[at:]
    if edit == "delete":
        return spelling[:at] + spelling[at + 1 :]
    return spelling[:at] + char + spelling[at + 1 :]


@given(st.one_of(near_uuid_text, near_miss_spellings(), st.text(max_size=40)))
@example("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11-")  # hyphen after the last group
@example("-a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")
@example("a0eebc99--9c0b-4ef8-bb6d-6bb9bd380a11")
@example("a0eeb-c99-9c0b-4ef8-bb6d-6bb9bd380a11")  # hyphen inside a group of four
@example("{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")
@example("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}")
@example("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11\n")
@example("a0eebc99-9c0b-4ef8-bb6d-\uff16bb9bd380a11")  # a full-width six
@example("count")
def test_only_postgres_spellings_are_run_ids(text: str) -> None:
    expected = postgres_uuid_in(text)

    assert canonical_run_id(text) == expected
    path = b"/v1/runs/" + quote(text, safe="").encode("ascii")
    route = match_cached_route(path)
    assert route == (None if expected is None else CachedRoute(RouteKind.RUN, expected))


# -- request paths ---------------------------------------------------------------------------


PATH_ATOMS = [
    b".", b"..", b"...", b"..a", b"a..", b"%2e", b"%2E", b"%2e%2e", b"%2E%2e", b".%2e", b"%2E.",
    b"%2f", b"%2F", b"%5c", b"\\", b"%252e", b"%252E%252e", b"%252f", b"%25", b"%", b"%2",
    b"%zz", b"%%2e", b"%00", b"%0a", b"%0D", b"%1f", b"%7f", b"%7F", b"%20", b"%80", b"%c2%85",
    b"%7B", b"%7d", b"\x00", b"\x01", b"\t", b"\x1f", b"\x7f", b" ", b"\x80", b"\xc2\x85",
    b"\xff", b"\xc3\xa9", b";", b"=", b"~", b"v1", b"runs", b"related", b"count", b"admin",
    b"a", b"A", b"0", b"%c0%ae", b"%C0%AE", b"%c0", b"%ae", b"%e0%80%ae", b"%c0%af",
    b"%ed%a0%80", b"%f4%90%80%80", b"%c3", b"%c3%a9", b"%C3%A9", b"%e2%9c%93",
    b"%f0%9f%98%80", b"%ff", b"%fe",
]  # fmt: skip

DOT_SPELLINGS = [b".", b"..", b"%2e", b"%2E", b"%2e%2e", b"%2E%2E", b"%2e.", b".%2E", b"%2E%2e"]

segment = st.one_of(
    st.sampled_from(DOT_SPELLINGS),
    st.sampled_from([b"v1", b"runs", b"related", b"%2e%2e%2f", b"%252e%252e", b"...."]),
    st.lists(st.sampled_from(PATH_ATOMS), max_size=3).map(b"".join),
    st.uuids().map(lambda u: str(u).encode()),
    st.binary(max_size=6),
)


@st.composite
def raw_paths(draw: st.DrawFn) -> bytes:
    """Paths from a grammar of hostile segments, joined by '/', sometimes not rooted."""
    segments = draw(st.lists(segment, max_size=6))
    path = b"/".join(segments)
    path = draw(st.sampled_from([b"/"] * 9 + [b""])) + path
    if draw(st.booleans()):
        path += b"/"
    return path


@given(st.one_of(raw_paths(), st.binary(max_size=30).map(b"/".__add__)))
@example(b"/v1/runs/%2e%2e/admin")
@example(b"/v1/%2E./x")
@example(b"/v1/.%2e")
@example(b"/v1/%252e%252e/x")  # decoded once, this is %2e%2e: not a dot segment
@example(b"/v1/%2%2e")
@example(b"/v1/a%2Fb")
@example(b"/v1/a%00")
@example(b"/v1/a\x7f")
@example(b"/v1/...")
@example(b"/v1/..\\admin")
@example(b"/v1/a%5c..%5cb")
@example(b"/v1/a\\b")
@example(b"/v1/runs/%c0%ae/x")  # an overlong '.'
@example(b"/v1/runs/%c0%ae%c0%ae/admin")
@example(b"/v1/%e0%80%ae")
@example(b"/v1/%ed%a0%80")  # a surrogate
@example(b"/v1/%c3")  # cut short
@example(b"/v1/caf%c3%a9")  # valid UTF-8: accepted
@example(b"/v1/caf\xc3\xa9")  # raw: not ASCII
@example(b"v1/runs")
@example(b"")
@example(b"/")
@example(b"//")
def test_check_path_accepts_exactly_what_the_spec_accepts(raw_path: bytes) -> None:
    rejected = check_path(raw_path)

    assert (rejected is None) == spec_accepts(raw_path)
    if rejected is not None:
        assert rejected.message


# -- the own surface -------------------------------------------------------------------------


def _percent_encoded(draw: st.DrawFn, text: bytes) -> bytes:
    """Some of `text`'s bytes percent-encoded, in either hex case."""
    out = b""
    for byte in text:
        if draw(st.integers(0, 3)) == 0:
            out += (b"%%%02x" if draw(st.booleans()) else b"%%%02X") % byte
        else:
            out += bytes([byte])
    return out


def _any_case(draw: st.DrawFn, byte: int) -> int:
    return draw(st.sampled_from([byte, byte ^ 0x20])) if 0x61 <= byte <= 0x7A else byte


@st.composite
def own_surface_spellings(draw: st.DrawFn) -> bytes:
    """`/admin/...` or `/openapi.json` undone by the normalisations a server may apply: case,
    `;` parameters, extra and trailing slashes, backslashes, dot segments (`..;` too), and up
    to three rounds of percent-encoding."""
    own = draw(
        st.sampled_from([[b"admin", b"cache", b"runs", b"x"], [b"admin"], [b"openapi.json"]])
    )
    segments = []
    for name in own:
        if draw(st.integers(0, 3)) == 0:
            segments.append(draw(st.sampled_from([b"v1", b"x"])))
            segments.append(draw(st.sampled_from([b"..", b"..;", b"..;x=1"])))
        if draw(st.booleans()):
            segments.append(draw(st.sampled_from([b"", b"."])))  # `//` or `/./`
        segments.append(bytes(_any_case(draw, byte) for byte in name))
        if draw(st.booleans()):
            segments[-1] += draw(st.sampled_from([b";", b";jsessionid=1", b";a=b,c"]))
    slash = draw(st.sampled_from([b"/", b"/", b"\\"]))
    path = b"/" + slash.join(segments) + draw(st.sampled_from([b"", b"/", b"//"]))
    for _ in range(draw(st.integers(0, 3))):
        path = b"/" + _percent_encoded(draw, path[1:])
    return path


@given(own_surface_spellings())
@example(b"//admin/cache/runs/x")
@example(b"/admin;/cache/runs/x")
@example(b"/x/..;/%2561dmin/")
def test_every_normalisation_of_the_own_surface_stays_here(path: bytes) -> None:
    assert is_own_surface(path)


# -- query normalisation ---------------------------------------------------------------------

QUERY_NAMES = [b"projectId", b"project%49d", b"proje%63tId", b"a", b"A", b"a+b", b"a%20b",
               b"%ff", b"%fe", b"%c3%a9", b"%C3%A9", b"b%5B%5D", b"b[]"]  # fmt: skip
parameters = st.tuples(
    st.sampled_from(QUERY_NAMES), st.sampled_from([b"=1", b"=2", b"=", b"", b"=%31", b"=p+1"])
).map(b"".join)


def read_like_lunary(query: bytes) -> dict[str, list[str]]:
    """What a server reads from a query: each decoded name with its values in order."""
    read: dict[str, list[str]] = defaultdict(list)
    for name, value in parse_qsl(query.decode("ascii"), keep_blank_values=True, errors="replace"):
        read[name].append(value)
    return dict(read)


def parts_by_name(parameters: list[bytes]) -> dict[str, list[bytes]]:
    """Each decoded name with its raw parameters in order."""
    parts: dict[str, list[bytes]] = defaultdict(list)
    for part in parameters:
        (name, _), *_ = parse_qsl(part.decode("ascii"), keep_blank_values=True, errors="replace")
        parts[name].append(part)
    return dict(parts)


@given(
    st.lists(parameters, max_size=6).flatmap(lambda p: st.tuples(st.just(p), st.permutations(p)))
)
@example(([b"projectId=p1", b"projectId=p2"], [b"projectId=p2", b"projectId=p1"]))
@example(([b"project%49d=a", b"projectId=b"], [b"projectId=b", b"project%49d=a"]))
def test_two_orders_share_an_entry_only_when_read_alike(
    orders: tuple[list[bytes], list[bytes]],
) -> None:
    first, second = (b"&".join(order) for order in orders)

    same_entry = normalise_query(first) == normalise_query(second)

    if same_entry:
        assert read_like_lunary(first) == read_like_lunary(second)
    first_parts, second_parts = (parts_by_name(order) for order in orders)
    if first_parts == second_parts and all(name.isascii() for name in first_parts):
        assert same_entry  # ASCII names: any order that moves only distinct names is one entry
