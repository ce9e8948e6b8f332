"""The Redis store (redis-py, sync or asyncio client).

Each record is one Redis string with a millisecond expiry (``PX``): the lease while in
flight, the time-to-live once completed, so Redis itself forgets expired records and
every client agrees on the time. Every operation runs in one Lua script, atomic in Redis:
a claim is ``SET NX PX`` or, if the key exists, its value (and ``PTTL`` while in flight)
in the same round trip, so a replay costs one round trip.

The async half batches: the operations of concurrent tasks go to Redis together as one
script run (one ``EVALSHA``, a few hundred operations at most), so a thousand
concurrent replays cost a few round trips and a few commands to build and parse, not a
thousand. Each operation is still atomic; an operation that fails (a key holding
another type) answers its own caller with the error and leaves the others alone.

Values: ``I<token>\\n<fingerprint>`` in flight, ``C<fingerprint>\\n<payload>`` completed.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any, Final

import redis
import redis.asyncio
from redis.exceptions import NoScriptError

from .errors import IdempotencyStoreError
from .store import CLAIMED, ClaimResult, Completed, InFlight

__all__ = ["RedisStore"]

# KEYS[i] is the record of operation i; ARGV holds, in the same order, each operation's
# name and then its arguments. A failing operation (pcall) answers with its error, so
# one bad key in a batch neither aborts the script halfway nor fails its neighbours.
_SCRIPT: Final = """
local ops = {}
-- Free: write the in-flight value. Taken: its value, plus PTTL while in flight.
ops.claim = function(key, a)
  if redis.call('SET', key, ARGV[a], 'NX', 'PX', ARGV[a + 1]) then return 1 end
  local v = redis.call('GET', key)
  if string.sub(v, 1, 1) == 'C' then return v end
  return {v, redis.call('PTTL', key)}
end
-- Ours (the value starts with the owner prefix I<token>\\n) or gone: store the outcome.
ops.complete = function(key, a)
  local v = redis.call('GET', key)
  if v and string.sub(v, 1, #ARGV[a]) ~= ARGV[a] then return 0 end
  redis.call('SET', key, ARGV[a + 1], 'PX', ARGV[a + 2])
  return 1
end
ops.release = function(key, a)
  local v = redis.call('GET', key)
  if v and string.sub(v, 1, #ARGV[a]) == ARGV[a] then return redis.call('DEL', key) end
  return 0
end
ops.renew = function(key, a)
  local v = redis.call('GET', key)
  if v and string.sub(v, 1, #ARGV[a]) == ARGV[a] then
    return redis.call('PEXPIRE', key, ARGV[a + 1])
  end
  return 0
end
local arity = {claim = 2, complete = 3, release = 1, renew = 2}
local out, a = {}, 1
for i, key in ipairs(KEYS) do
  local op = ARGV[a]
  local ok, reply = pcall(ops[op], key, a + 1)
  if ok or (type(reply) == 'table' and reply.err) then
    out[i] = reply
  else
    out[i] = redis.error_reply(tostring(reply))
  end
  a = a + 1 + arity[op]
end
return out
"""
_SHA: Final = hashlib.sha1(_SCRIPT.encode()).hexdigest()
# At most this many operations per script run: a run blocks Redis while it lasts.
MAX_BATCH: Final = 256


class _Batcher:
    """Sends the operations of concurrent tasks together, one script run per round trip.

    A call queues its operation and awaits a future. One drain task at a time sends
    everything queued (up to :data:`MAX_BATCH` operations per run) and hands out the
    replies; calls queued meanwhile go in the next run. A lone call costs what it did;
    a thousand concurrent ones cost a few round trips.
    """

    __slots__ = ("_client", "_drainer", "_pending")

    def __init__(self, client: Any) -> None:
        self._client = client
        self._pending: list[tuple[bytes, tuple[bytes, ...], asyncio.Future[Any]]] = []
        self._drainer: asyncio.Task[None] | None = None

    def submit(self, key: bytes, args: tuple[bytes, ...]) -> asyncio.Future[Any]:
        """Queue one operation; the future gets its reply (or the batch's error)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append((key, args, future))
        if self._drainer is None:
            self._drainer = loop.create_task(self._drain())
        return future

    async def _drain(self) -> None:
        try:
            pending = self._pending
            while pending:
                batch = pending[:MAX_BATCH]
                del pending[:MAX_BATCH]
                await self._send(batch)
        finally:
            self._drainer = None

    async def _send(
        self, batch: list[tuple[bytes, tuple[bytes, ...], asyncio.Future[Any]]]
    ) -> None:
        try:
            keys = [key for key, _, _ in batch]
            argv = [arg for _, args, _ in batch for arg in args]
            try:
                replies = await self._client.execute_command(
                    "EVALSHA", _SHA, len(keys), *keys, *argv
                )
            except NoScriptError:
                # First use, or the server restarted or flushed its scripts.
                await self._client.script_load(_SCRIPT)
                replies = await self._client.execute_command(
                    "EVALSHA", _SHA, len(keys), *keys, *argv
                )
            for (_, _, future), reply in zip(batch, replies, strict=True):
                if not future.done():  # else its caller was cancelled
                    future.set_result(reply)
        except BaseException as exc:
            # No caller may wait forever: every future gets the error.
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(
                        exc if isinstance(exc, Exception) else redis.ConnectionError(repr(exc))
                    )
            if not isinstance(exc, Exception):
                raise


# Every argument goes to redis-py as bytes already: packing thousands of arguments per
# round trip, its encoder would otherwise convert each one again.
def _ms(seconds: float) -> bytes:
    return b"%d" % max(1, int(seconds * 1000))


def _owner(token: str) -> bytes:
    return b"I" + token.encode() + b"\n"


def _answer(reply: Any) -> ClaimResult:
    if reply == 1:
        return CLAIMED
    if isinstance(reply, bytes):  # completed: the value alone
        value, pttl = reply, 0
    elif isinstance(reply, list):
        value, pttl = reply
    else:
        raise _failed("claim", reply)
    if not isinstance(value, bytes):
        raise IdempotencyStoreError(
            "Redis returned text, not bytes: build the client with decode_responses=False"
        )
    head, _, rest = value.partition(b"\n")
    if value[:1] == b"C":
        return Completed(head[1:].decode(), rest)
    return InFlight(rest.decode(), max(0, int(pttl)) / 1000.0)


def _done(name: str, reply: Any) -> bool:
    if isinstance(reply, int):
        return reply == 1
    raise _failed(name, reply)


def _failed(name: str, reply: Any) -> IdempotencyStoreError:
    error = IdempotencyStoreError(f"Redis {name} failed: {reply}")
    if isinstance(reply, BaseException):
        error.__cause__ = reply
    return error


class RedisStore:
    """Claims and outcomes in Redis.

    Parameters:
        client: a ``redis.Redis`` (sync; its async methods run it in a worker thread) or
            a ``redis.asyncio.Redis`` (async only), with ``decode_responses=False``.
        prefix: prepended to every key; default ``"resilience:idempotency:"``.

    The store does not own a client it is given; one made by :meth:`from_url` is closed
    by :meth:`close` / :meth:`aclose`.
    """

    __slots__ = ("_batcher", "_client", "_encoding", "_is_async", "_owned", "prefix")

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
        # Keys are encoded as the client would encode them.
        self._encoding = (kwargs.get("encoding", "utf-8"), kwargs.get("encoding_errors", "strict"))
        self._client = client
        self._owned = False
        self._batcher = _Batcher(client) if self._is_async else None

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

    def _run(self, name: bytes, key: str, args: tuple[bytes, ...]) -> Any:
        """One operation, one script run; its own reply (or error object)."""
        if self._is_async:
            raise TypeError(f"{self!r} was built on an asyncio client: use a{name.decode()}()")
        client = self._client
        rkey = (self.prefix + key).encode(*self._encoding)
        try:
            try:
                replies = client.execute_command("EVALSHA", _SHA, 1, rkey, name, *args)
            except NoScriptError:
                client.script_load(_SCRIPT)
                replies = client.execute_command("EVALSHA", _SHA, 1, rkey, name, *args)
        except redis.RedisError as exc:
            raise IdempotencyStoreError(f"Redis {name.decode()} failed: {exc}") from exc
        return replies[0]

    async def _arun(self, name: bytes, key: str, args: tuple[bytes, ...]) -> Any:
        batcher = self._batcher
        if batcher is None:
            return await asyncio.to_thread(self._run, name, key, args)
        try:
            return await batcher.submit((self.prefix + key).encode(*self._encoding), (name, *args))
        except redis.RedisError as exc:
            raise IdempotencyStoreError(f"Redis {name.decode()} failed: {exc}") from exc

    # -- sync ------------------------------------------------------------------------------
    def claim(self, key: str, fingerprint: str, token: str, lease: float) -> ClaimResult:
        value = b"I" + token.encode() + b"\n" + fingerprint.encode()
        return _answer(self._run(b"claim", key, (value, _ms(lease))))

    def complete(self, key: str, fingerprint: str, token: str, payload: bytes, ttl: float) -> bool:
        value = b"C" + fingerprint.encode() + b"\n" + payload
        return _done("complete", self._run(b"complete", key, (_owner(token), value, _ms(ttl))))

    def release(self, key: str, token: str) -> bool:
        return _done("release", self._run(b"release", key, (_owner(token),)))

    def renew(self, key: str, token: str, lease: float) -> bool:
        return _done("renew", self._run(b"renew", key, (_owner(token), _ms(lease))))

    # -- async -----------------------------------------------------------------------------
    async def aclaim(self, key: str, fingerprint: str, token: str, lease: float) -> ClaimResult:
        value = b"I" + token.encode() + b"\n" + fingerprint.encode()
        return _answer(await self._arun(b"claim", key, (value, _ms(lease))))

    async def acomplete(
        self, key: str, fingerprint: str, token: str, payload: bytes, ttl: float
    ) -> bool:
        value = b"C" + fingerprint.encode() + b"\n" + payload
        args = (_owner(token), value, _ms(ttl))
        return _done("complete", await self._arun(b"complete", key, args))

    async def arelease(self, key: str, token: str) -> bool:
        return _done("release", await self._arun(b"release", key, (_owner(token),)))

    async def arenew(self, key: str, token: str, lease: float) -> bool:
        return _done("renew", await self._arun(b"renew", key, (_owner(token), _ms(lease))))

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
