"""The shared store on Redis (redis-py asyncio, hiredis parser), one round trip per lookup.

Layout, all keys of a run in one Cluster hash slot:
  lcp:1:{<run-id>}:gen                      the run's generation (absent = 0)
  lcp:1:{<run-id>}:<route>:<scope>[:q...]   an entry, carrying the generation it was read under
  lcp:1:{<run-id>}:lock:<route>:<scope>...  the fill lock: a random token, with a short lease
  lcp:1:{<run-id>}:wait:<route>:<scope>...  set by a waiter, so the leader knows to announce
  lcp:1:cooldown:{<bucket digest>}          until when a rate bucket must not call the upstream
  lcp:1:{cuts}                              the fail-safe cuts of the last seconds (core/cuts.py):
                                            scope digest -> when it made a write the proxy could
                                            not read, trimmed to the window in which each matters
  lcp:1:{cuts}:expired                      the newest cut trimmed out: entries stored before it
                                            have expired
An entry whose generation is behind the run's counter is ignored, so dropping every entry of a run
is one INCR however many scopes hold it.

A lookup takes the fill lock in the same round trip when nothing servable is stored, so a cold
miss costs two round trips (LOOKUP_OR_LEAD, then END_FILL with the entry), a hit one.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from redis.asyncio import Redis, RedisCluster
from redis.exceptions import (
    ReadOnlyError,
    RedisClusterException,
    RedisError,
    ResponseError,
)

from proxy.cache.ports import (
    Claim,
    FillLock,
    KeptCuts,
    StoreError,
)
from proxy.core.cuts import MAX_RECENT_CUTS
from proxy.core.model import Entry, EntryKey, Lookup
from proxy.store import codec
from proxy.store.causes import store_error
from proxy.store.connection import close_client
from proxy.store.notify import FillNotices

# what a failing or unreachable Redis (or Cluster) raises; all of it becomes a StoreError
REDIS_FAILURES = (RedisError, RedisClusterException, OSError, TimeoutError)
KEY_PREFIX = "lcp:1:"
FILLED_CHANNEL = KEY_PREFIX + "filled"
INVALIDATED_CHANNEL = KEY_PREFIX + "invalidated"
CUTS_KEY = KEY_PREFIX + "{cuts}"  # one slot for both: the script touches them together
CUTS_EXPIRED_KEY = CUTS_KEY + ":expired"

# KEYS: generation, entry, lock, wait flag. ARGV: token, lease ms. A lookup (MGET, which reads a
# value of another type as nil) that, when no entry of the run's generation is stored, does what
# BEGIN_FILL does: {0, generation, entry} an entry is stored (or Lua cannot judge it exactly: the
# caller decodes it), no lock asked for; {1, generation} the lock is ours; {2, generation} another
# holds it, and we are flagged as its waiter. The entry's generation sits in codec.py's 33-byte
# header after the magic ('LCP' and version 1 or 2) and the status: bytes 7 to 14, big-endian.
# Lua's numbers are doubles, so a run's generation is judged only below 2^53 (Redis writes
# microseconds, ~2^50); an entry's above it differs from any such generation anyway.
LOOKUP_OR_LEAD = """
local function exact(generation)
  if not generation then return 0 end
  if not string.find(generation, '^%d+$') then return nil end
  local value = tonumber(generation)
  if value < 9007199254740992 then return value end
  return nil
end
local function written(entry)
  local version = string.byte(entry, 4)
  if #entry < 33 or string.sub(entry, 1, 3) ~= 'LCP' or (version ~= 1 and version ~= 2) then
    return nil
  end
  local b1, b2, b3, b4, b5, b6, b7, b8 = string.byte(entry, 7, 14)
  local high = ((b1 * 256 + b2) * 256 + b3) * 256 + b4
  return high * 4294967296 + ((b5 * 256 + b6) * 256 + b7) * 256 + b8
end
local found = redis.call('MGET', KEYS[1], KEYS[2])
local entry = found[2]
if entry then
  local current, stored = exact(found[1]), written(entry)
  if not current or not stored or stored == current then return {0, found[1], entry} end
end
-- ours already: a retry of a call whose answer was lost on the way leads, as the call did
if redis.call('SET', KEYS[3], ARGV[1], 'NX', 'PX', ARGV[2]) or redis.call('GET', KEYS[3]) == ARGV[1]
then
  return {1, found[1]}
end
redis.call('SET', KEYS[4], '1', 'PX', ARGV[2])
return {2, found[1]}
"""
_LOCKS = (FillLock.NOT_ASKED, FillLock.LED, FillLock.HELD)  # by LOOKUP_OR_LEAD's first item
# KEYS: lock, wait flag, generation, entry. ARGV: token, lease ms. Lead: {1, generation, entry}
# (what is stored now, read in the same step); or flag a waiter and follow: {0}.
BEGIN_FILL = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) or redis.call('GET', KEYS[1]) == ARGV[1]
then
  return {1, redis.call('GET', KEYS[3]), redis.call('GET', KEYS[4])}
end
redis.call('SET', KEYS[2], '1', 'PX', ARGV[2])
return {0}
"""
# KEYS: generation. ARGV: how long it must outlive the entries written under older generations,
# the channel and the run id to announce it with (so other replicas detach fills under way).
# Generations never repeat (microseconds of the server clock, and always above the last one), so
# an entry of an old generation can never match again, even after the counter expired.
INVALIDATE = """
local last = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
local now = redis.call('TIME')
local generation = math.max(last + 1, tonumber(now[1]) * 1000000 + tonumber(now[2]))
redis.call('SET', KEYS[1], string.format('%d', generation), 'PX', ARGV[1])
redis.call('PUBLISH', ARGV[2], ARGV[3])
return generation
"""
# KEYS: the cuts, the expired mark. ARGV: scope, time, window s, keep ms, channel, most kept.
# A scope's cut only moves forward. Cuts older than the window before the newest (and past the
# most kept, the oldest) are trimmed, the newest of them kept as the expired mark: entries stored
# before it have expired everywhere, so a replica that reads the cuts back misses none of them.
DECLARE_CUT = """
local at = tonumber(ARGV[2])
if at > (tonumber(redis.call('ZSCORE', KEYS[1], ARGV[1]) or '0') or 0) then
  redis.call('ZADD', KEYS[1], string.format('%.6f', at), ARGV[1])
end
local newest = tonumber(redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')[2])
local edge = newest - tonumber(ARGV[3])
local trimmed = redis.call('ZREVRANGEBYSCORE', KEYS[1], edge, '-inf', 'WITHSCORES', 'LIMIT', 0, 1)
local extra = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[6])
if extra > 0 then
  local oldest = redis.call('ZRANGE', KEYS[1], extra - 1, extra - 1, 'WITHSCORES')
  if #trimmed == 0 or tonumber(oldest[2]) > tonumber(trimmed[2]) then trimmed = oldest end
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, extra - 1)
end
if #trimmed > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', edge)
  if tonumber(trimmed[2]) > (tonumber(redis.call('GET', KEYS[2]) or '0') or 0) then
    redis.call('SET', KEYS[2], trimmed[2])
  end
end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('PEXPIRE', KEYS[2], ARGV[4]) end
redis.call('PUBLISH', ARGV[5], 'cut ' .. ARGV[1] .. ' ' .. string.format('%.6f', at))
return 1
"""
# KEYS: the cuts, the expired mark. Both at once: a cut trimmed between two reads is not lost.
READ_CUTS = """
return {redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES'), redis.call('GET', KEYS[2])}
"""
# KEYS: entry, lock, wait flag. ARGV: encoded entry or '', ttl ms, token, channel.
# Compare-and-delete: a slow leader whose lease ran out never releases a newer leader's lock,
# nor takes the wake-up that newer leader owes its waiters.
END_FILL = """
if ARGV[1] ~= '' then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) end
local holder = redis.call('GET', KEYS[2])
if holder == ARGV[3] then redis.call('DEL', KEYS[2]) end
if (holder == ARGV[3] or not holder) and redis.call('DEL', KEYS[3]) == 1 then
  redis.call('PUBLISH', ARGV[4], KEYS[1])
end
return 1
"""


def run_prefix(run_id: str) -> str:
    return f"{KEY_PREFIX}{{{run_id}}}:"


def entry_redis_key(key: EntryKey) -> str:
    return run_prefix(key.run_id) + key.name


def generation_redis_key(run_id: str) -> str:
    return run_prefix(run_id) + "gen"


def lock_redis_key(key: EntryKey) -> str:
    return run_prefix(key.run_id) + "lock:" + key.name


def wait_redis_key(key: EntryKey) -> str:
    return run_prefix(key.run_id) + "wait:" + key.name


def cooldown_redis_key(bucket: str) -> str:
    digest = hashlib.blake2b(bucket.encode(), digest_size=12).hexdigest()
    return f"{KEY_PREFIX}cooldown:{{{digest}}}"


class RedisStore:
    """Entries in Redis; every call bounded by `timeout` and mapped to StoreError on failure."""

    def __init__(
        self,
        client: Redis | RedisCluster,
        timeout: float,
        on_corrupt: Callable[[], None] = lambda: None,
        notices: FillNotices | None = None,
    ) -> None:
        self._client = client
        self._timeout = timeout
        self._on_corrupt = on_corrupt
        self._notices = notices
        self._lookup_or_lead = client.register_script(LOOKUP_OR_LEAD)
        self._begin_fill = client.register_script(BEGIN_FILL)
        self._end_fill = client.register_script(END_FILL)
        self._invalidate = client.register_script(INVALIDATE)
        self._declare_cut = client.register_script(DECLARE_CUT)
        self._read_cuts = client.register_script(READ_CUTS)
        self._reconnecting: asyncio.Task[None] | None = None
        self._giving_back: set[asyncio.Task[None]] = set()

    def _failed(self, operation: str, exc: BaseException) -> StoreError:
        if isinstance(exc, ReadOnlyError) and isinstance(self._client, Redis):
            self._reconnect(self._client)
        return store_error(operation, exc)

    def _reconnect(self, client: Redis) -> None:
        """READONLY on a plain URL: the node was demoted in a failover and the pooled
        connections still point at it; dropping them makes the next call resolve the primary
        endpoint anew (redis-py does this itself for Sentinel and Cluster clients)."""
        if self._reconnecting is None or self._reconnecting.done():
            pool = client.connection_pool
            self._reconnecting = asyncio.get_running_loop().create_task(pool.disconnect())

    def peek(self, key: EntryKey) -> Entry | None:
        return None  # every answer is a round trip

    async def lookup(self, key: EntryKey) -> Lookup:
        redis_key = entry_redis_key(key)
        try:
            async with asyncio.timeout(self._timeout):
                generation_raw, data = await self._client.mget(
                    generation_redis_key(key.run_id), redis_key
                )
        except REDIS_FAILURES as exc:
            raise self._failed("lookup", exc) from exc
        return self._found(generation_raw, data)

    async def lookup_or_lead(self, key: EntryKey, token: str, lease: float) -> Claim:
        keys = [
            generation_redis_key(key.run_id),
            entry_redis_key(key),
            lock_redis_key(key),
            wait_redis_key(key),
        ]
        try:
            async with asyncio.timeout(self._timeout):
                reply: list[Any] = await self._lookup_or_lead(keys=keys, args=[token, _ms(lease)])
        except ResponseError as exc:  # an error reply: the script took no lock (OOM, READONLY...)
            raise self._failed("lookup", exc) from exc
        except REDIS_FAILURES as exc:
            self._give_back_later(key, token)
            raise self._failed("lookup", exc) from exc
        except asyncio.CancelledError:
            self._give_back_later(key, token)
            raise
        lock = _LOCKS[reply[0]]
        if lock is FillLock.NOT_ASKED:
            return Claim(self._found(reply[1], reply[2]), lock)
        return Claim(Lookup(None, _as_generation(reply[1])), lock)

    def _give_back_later(self, key: EntryKey, token: str) -> None:
        """A lookup that timed out, lost its connection or was cancelled may have run on Redis
        all the same, taking the fill lock for a caller that will never know it holds it: give
        it back in the background (compare-and-delete, so only if `token` holds it). If that
        fails too, or reaches Redis before the script, the lock lives out its lease."""
        task = asyncio.get_running_loop().create_task(self._give_back(key, token))
        self._giving_back.add(task)
        task.add_done_callback(self._giving_back.discard)

    async def _give_back(self, key: EntryKey, token: str) -> None:
        with contextlib.suppress(StoreError):
            await self.end_fill(key, token, None)

    def _found(self, generation_raw: object, data: object, *, count_corrupt: bool = True) -> Lookup:
        generation = _as_generation(generation_raw)
        if not isinstance(data, bytes):
            return Lookup(None, generation)
        try:
            entry = codec.decode(data)
        except codec.CorruptEntry:
            if count_corrupt:
                self._on_corrupt()
            return Lookup(None, generation)
        if entry.generation != generation:
            return Lookup(None, generation)
        return Lookup(entry, generation)

    async def save(self, key: EntryKey, entry: Entry) -> None:
        ttl_ms = _ms(entry.kept_for)
        if ttl_ms <= 0:
            return
        try:
            async with asyncio.timeout(self._timeout):
                await self._client.set(entry_redis_key(key), codec.encode(entry), px=ttl_ms)
        except REDIS_FAILURES as exc:
            raise self._failed("save", exc) from exc

    async def invalidate_run(self, run_id: str, keep_for: float) -> int:
        try:
            async with asyncio.timeout(self._timeout):
                await self._invalidate(
                    keys=[generation_redis_key(run_id)],
                    args=[max(1, _ms(keep_for)), INVALIDATED_CHANNEL, run_id],
                )
        except REDIS_FAILURES as exc:
            raise self._failed("invalidate", exc) from exc
        return 0  # the entries are dead, not counted: counting them would need a scan

    async def declare_cut(self, scope: str, at: float, window: float, keep_for: float) -> None:
        keep_ms = max(1, _ms(keep_for))
        args: list[str | float] = [
            scope,
            repr(at),
            window,
            keep_ms,
            INVALIDATED_CHANNEL,
            MAX_RECENT_CUTS,
        ]
        try:
            async with asyncio.timeout(self._timeout):
                await self._declare_cut(keys=[CUTS_KEY, CUTS_EXPIRED_KEY], args=args)
        except REDIS_FAILURES as exc:
            raise self._failed("cut", exc) from exc

    async def read_cuts(self) -> KeptCuts:
        try:
            async with asyncio.timeout(self._timeout):
                recent, expired = await self._read_cuts(keys=[CUTS_KEY, CUTS_EXPIRED_KEY])
        except REDIS_FAILURES as exc:
            raise self._failed("read_cuts", exc) from exc
        return parse_cuts(recent, expired)

    async def begin_fill(self, key: EntryKey, token: str, lease: float) -> bool:
        return (await self._lock(key, token, lease))[0] == 1

    async def lead_fill(self, key: EntryKey, token: str, lease: float) -> Lookup | None:
        reply = await self._lock(key, token, lease)
        if reply[0] != 1:
            return None
        # a lead follows a lookup of the same key, which already counted a corrupt value
        return self._found(reply[1], reply[2], count_corrupt=False)

    async def _lock(self, key: EntryKey, token: str, lease: float) -> list[object]:
        keys = [
            lock_redis_key(key),
            wait_redis_key(key),
            generation_redis_key(key.run_id),
            entry_redis_key(key),
        ]
        try:
            async with asyncio.timeout(self._timeout):
                reply: list[object] = await self._begin_fill(keys=keys, args=[token, _ms(lease)])
        except REDIS_FAILURES as exc:
            raise self._failed("begin_fill", exc) from exc
        return reply

    async def end_fill(self, key: EntryKey, token: str, entry: Entry | None) -> None:
        keys = [entry_redis_key(key), lock_redis_key(key), wait_redis_key(key)]
        value, ttl_ms = b"", 0
        if entry is not None and _ms(entry.kept_for) > 0:
            value, ttl_ms = codec.encode(entry), _ms(entry.kept_for)
        try:
            async with asyncio.timeout(self._timeout):
                await self._end_fill(keys=keys, args=[value, ttl_ms, token, FILLED_CHANNEL])
        except REDIS_FAILURES as exc:
            raise self._failed("end_fill", exc) from exc

    def watch_fill(self, key: EntryKey) -> AbstractContextManager[asyncio.Future[None] | None]:
        if self._notices is None:
            return contextlib.nullcontext(None)
        return self._notices.watch(entry_redis_key(key))

    async def cooldown_until(self, bucket: str) -> float:
        try:
            async with asyncio.timeout(self._timeout):
                raw = await self._client.get(cooldown_redis_key(bucket))
        except REDIS_FAILURES as exc:
            raise self._failed("cooldown read", exc) from exc
        try:
            return float(raw) if isinstance(raw, bytes) else 0.0
        except ValueError:
            return 0.0

    async def start_cooldown(self, bucket: str, until: float, ttl: float) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                await self._client.set(cooldown_redis_key(bucket), repr(until), px=max(1, _ms(ttl)))
        except REDIS_FAILURES as exc:
            raise self._failed("cooldown write", exc) from exc

    async def connect(self, budget: float) -> None:
        """The first round trip, made at start-up within `budget`: it opens the first
        connection, and on a Cluster redis-py learns the slot map and command table before it.
        That takes longer on a busy machine than one call's timeout, and would otherwise fail
        the first request and open the breaker on a replica that just started."""
        await self._ping("connect", budget)

    async def ping(self) -> None:
        await self._ping("ping", self._timeout)

    async def _ping(self, operation: str, within: float) -> None:
        try:
            async with asyncio.timeout(within):
                await self._client.ping()
        except REDIS_FAILURES as exc:
            raise self._failed(operation, exc) from exc

    async def close(self) -> None:
        if self._giving_back:  # each bounded by the timeout: a lock given back beats a lease
            await asyncio.gather(*self._giving_back, return_exceptions=True)
        if self._reconnecting is not None:
            self._reconnecting.cancel()
            with contextlib.suppress(asyncio.CancelledError, *REDIS_FAILURES):
                await self._reconnecting
        await close_client(self._client)


def parse_cuts(recent: object, expired: object) -> KeptCuts:
    """The kept cuts as read by READ_CUTS: [scope, time, scope, time, ...] and the expired
    mark; a member or value that is not ours is skipped."""
    cuts: dict[str, float] = {}
    items = recent if isinstance(recent, list) else []
    for scope, at in zip(items[::2], items[1::2], strict=True):
        try:
            cuts[scope.decode("ascii")] = float(at)
        except (AttributeError, UnicodeDecodeError, ValueError):
            continue
    try:
        expired_before = float(expired) if isinstance(expired, bytes) else 0.0
    except ValueError:
        expired_before = 0.0
    return KeptCuts(expired_before, cuts)


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


def _as_generation(raw: object) -> int:
    if not isinstance(raw, bytes):
        return 0
    try:
        return max(0, int(raw))
    except ValueError:
        return 0  # a foreign value: entries written under it still match only each other
