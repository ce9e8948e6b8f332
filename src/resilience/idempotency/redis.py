"""The Redis store (redis-py, sync or asyncio client).

Each record is one Redis string with a millisecond expiry (``PX``): the lease while in
flight, the time-to-live once completed, so Redis itself forgets expired records and
every client agrees on the time. Each operation is one Lua script, atomic in Redis: a
claim is ``SET NX PX`` or, if the key exists, its value (and ``PTTL`` while in flight)
in the same round trip, so a replay costs one round trip. The async half pipelines the
scripts of concurrent tasks into shared round trips.

Values: ``I<token>\\n<fingerprint>`` in flight, ``C<fingerprint>\\n<payload>`` completed.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import redis
import redis.asyncio
from redis.exceptions import NoScriptError

from .errors import IdempotencyStoreError
from .store import CLAIMED, ClaimResult, Completed, InFlight

__all__ = ["RedisStore"]

_CLAIM = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
local v = redis.call('GET', KEYS[1])
if string.sub(v, 1, 1) == 'C' then return v end
return {v, redis.call('PTTL', KEYS[1])}
"""
# Ours (value starts with I<token>\n) or gone: store the outcome.
_COMPLETE = """
local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 1, #ARGV[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
"""
_RELEASE = """
local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 1, #ARGV[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_RENEW = """
local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 1, #ARGV[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""


_SOURCES = {"claim": _CLAIM, "complete": _COMPLETE, "release": _RELEASE, "renew": _RENEW}
_SHAS = {name: hashlib.sha1(src.encode()).hexdigest() for name, src in _SOURCES.items()}


class _AutoPipeline:
    """Sends the scripts of concurrent tasks together, one pipeline per round trip.

    A call queues its script and awaits a future. One drain task at a time sends
    everything queued as one non-transactional pipeline and hands out the replies; calls
    queued meanwhile go in the next pipeline. Each script is still atomic in Redis; only
    the round trips are shared, so a lone call costs what it did and a thousand
    concurrent ones cost a few round trips.
    """

    __slots__ = ("_client", "_drainer", "_pending")

    def __init__(self, client: Any) -> None:
        self._client = client
        self._pending: list[tuple[str, tuple[Any, ...], asyncio.Future[Any]]] = []
        self._drainer: asyncio.Task[None] | None = None

    async def run(self, name: str, keys_and_args: tuple[Any, ...]) -> Any:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append((name, keys_and_args, future))
        if self._drainer is None:
            self._drainer = loop.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                await self._send(batch)
        finally:
            self._drainer = None

    async def _send(self, batch: list[tuple[str, tuple[Any, ...], asyncio.Future[Any]]]) -> None:
        try:
            for attempt in (1, 2):
                pipe = self._client.pipeline(transaction=False)
                for name, keys_and_args, _ in batch:
                    pipe.evalsha(_SHAS[name], 1, *keys_and_args)
                replies = await pipe.execute(raise_on_error=False)
                if attempt == 1 and any(isinstance(r, NoScriptError) for r in replies):
                    # First use, or the server restarted or flushed its scripts.
                    for src in _SOURCES.values():
                        await self._client.script_load(src)
                    continue
                for (_, _, future), reply in zip(batch, replies, strict=True):
                    if future.done():  # its caller was cancelled
                        continue
                    if isinstance(reply, Exception):
                        future.set_exception(reply)
                    else:
                        future.set_result(reply)
                return
        except BaseException as exc:
            # No caller may wait forever: every future gets the error.
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(
                        exc if isinstance(exc, Exception) else redis.ConnectionError(repr(exc))
                    )
            if not isinstance(exc, Exception):
                raise


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def _owner(token: str) -> bytes:
    return b"I" + token.encode() + b"\n"


def _answer(reply: Any) -> ClaimResult:
    if reply == 1:
        return CLAIMED
    if isinstance(reply, bytes):  # completed: the value alone
        value, pttl = reply, 0
    else:
        value, pttl = reply
    if not isinstance(value, bytes):
        raise IdempotencyStoreError(
            "Redis returned text, not bytes: build the client with decode_responses=False"
        )
    kind, head, rest = value[:1], *value[1:].partition(b"\n")[::2]
    if kind == b"C":
        return Completed(head.decode(), rest)
    return InFlight(rest.decode(), max(0, int(pttl)) / 1000.0)


class RedisStore:
    """Claims and outcomes in Redis.

    Parameters:
        client: a ``redis.Redis`` (sync; its async methods run it in a worker thread) or
            a ``redis.asyncio.Redis`` (async only), with ``decode_responses=False``.
        prefix: prepended to every key; default ``"resilience:idempotency:"``.

    The store does not own a client it is given; one made by :meth:`from_url` is closed
    by :meth:`close` / :meth:`aclose`.
    """

    __slots__ = ("_client", "_is_async", "_owned", "_pipeline", "_scripts", "prefix")

    def __init__(self, client: Any, *, prefix: str = "resilience:idempotency:") -> None:
        if isinstance(client, redis.asyncio.Redis):
            self._is_async = True
        elif isinstance(client, redis.Redis):
            self._is_async = False
        else:
            raise TypeError(f"client must be a redis.Redis or redis.asyncio.Redis, got {client!r}")
        kwargs = client.connection_pool.connection_kwargs
        if kwargs.get("decode_responses"):
            raise ValueError(
                "client must be built with decode_responses=False (payloads are bytes)"
            )
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a str, got {prefix!r}")
        self.prefix = prefix
        self._client = client
        self._owned = False
        self._scripts = {name: client.register_script(src) for name, src in _SOURCES.items()}
        self._pipeline = _AutoPipeline(client) if self._is_async else None

    @classmethod
    def from_url(
        cls, url: str, *, async_client: bool = False, prefix: str = "resilience:idempotency:"
    ) -> RedisStore:
        """A store with its own client for ``url`` (``redis://host:port/db``)."""
        module: Any = redis.asyncio if async_client else redis
        store = cls(module.Redis.from_url(url), prefix=prefix)
        store._owned = True
        return store

    @property
    def supports_sync(self) -> bool:
        return not self._is_async

    @property
    def supports_async(self) -> bool:
        return True

    def __repr__(self) -> str:
        kind = "asyncio" if self._is_async else "sync"
        return f"RedisStore({kind}, prefix={self.prefix!r})"

    def _run(self, name: str, key: str, args: list[Any]) -> Any:
        if self._is_async:
            raise TypeError(f"{self!r} was built on an asyncio client: use a{name}()")
        try:
            return self._scripts[name](keys=[self.prefix + key], args=args)
        except redis.RedisError as exc:
            raise IdempotencyStoreError(f"Redis {name} failed: {exc}") from exc

    async def _arun(self, name: str, key: str, args: list[Any]) -> Any:
        if not self._is_async:
            return await asyncio.to_thread(self._run, name, key, args)
        assert self._pipeline is not None
        try:
            return await self._pipeline.run(name, (self.prefix + key, *args))
        except redis.RedisError as exc:
            raise IdempotencyStoreError(f"Redis {name} failed: {exc}") from exc

    # -- sync ------------------------------------------------------------------------------
    def claim(self, key: str, fingerprint: str, token: str, lease: float) -> ClaimResult:
        return _answer(self._run("claim", key, [_owner(token) + fingerprint.encode(), _ms(lease)]))

    def complete(self, key: str, fingerprint: str, token: str, payload: bytes, ttl: float) -> bool:
        value = b"C" + fingerprint.encode() + b"\n" + payload
        return bool((self._run("complete", key, [_owner(token), value, _ms(ttl)])) == 1)

    def release(self, key: str, token: str) -> bool:
        return bool((self._run("release", key, [_owner(token)])) == 1)

    def renew(self, key: str, token: str, lease: float) -> bool:
        return bool((self._run("renew", key, [_owner(token), _ms(lease)])) == 1)

    # -- async -----------------------------------------------------------------------------
    async def aclaim(self, key: str, fingerprint: str, token: str, lease: float) -> ClaimResult:
        args = [_owner(token) + fingerprint.encode(), _ms(lease)]
        return _answer(await self._arun("claim", key, args))

    async def acomplete(
        self, key: str, fingerprint: str, token: str, payload: bytes, ttl: float
    ) -> bool:
        value = b"C" + fingerprint.encode() + b"\n" + payload
        return bool((await self._arun("complete", key, [_owner(token), value, _ms(ttl)])) == 1)

    async def arelease(self, key: str, token: str) -> bool:
        return bool((await self._arun("release", key, [_owner(token)])) == 1)

    async def arenew(self, key: str, token: str, lease: float) -> bool:
        return bool((await self._arun("renew", key, [_owner(token), _ms(lease)])) == 1)

    def close(self) -> None:
        """Close the client if this store made it (:meth:`from_url`)."""
        if self._owned and not self._is_async:
            self._client.close()

    async def aclose(self) -> None:
        """Close the client if this store made it (:meth:`from_url`)."""
        if self._owned:
            if self._is_async:
                await self._client.aclose()
            else:
                self._client.close()
