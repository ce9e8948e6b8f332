"""The :class:`Idempotency` strategy: make a function idempotent by key."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from datetime import timedelta
from typing import Any, ClassVar, Final, Literal

from resilience._core.clock import Clock
from resilience._core.options import UNSET, Unset
from resilience._core.outcome import DEFAULT_CLASSIFIER, Classifier, Outcome
from resilience._core.strategy import AnyCallable, AsyncCallable, Scope, Strategy

from ._guard import DEFAULT_MAX_KEY_LENGTH, Guard, Ticket, check_key, fingerprint_of, guard_options
from ._guard import store_key as make_store_key
from .codec import Codec, JsonCodec, error_record, qualified_name, rebuild_error
from .errors import IdempotencyStoreError, ReplayedError
from .store import Completed, IdempotencyStore

__all__ = ["Idempotency"]

UNKNOWN_FAILURE_POLICIES: Final = ("release", "store")
_FORMAT: Final = 1

KeyFunction = Callable[..., "str | None"]
_Parts = Callable[[tuple[Any, ...], dict[str, Any]], Any]


def _add_note(exc: BaseException, note: str) -> None:
    add = getattr(exc, "add_note", None)
    if add is not None:
        add(note)
    else:  # Python 3.10: PEP 678 by hand
        notes = getattr(exc, "__notes__", None)
        if not isinstance(notes, list):
            notes = []
            exc.__notes__ = notes  # type: ignore[attr-defined]
        notes.append(note)


class Idempotency(Strategy):
    """Run a call at most once per idempotency key; replay its outcome to later calls.

    The first call with a key *claims* it (atomically, with a lease), runs, and *stores*
    its outcome. A later call with the same key and the same arguments gets that outcome
    *replayed* without running; a call while the first one still runs gets
    :class:`~resilience.idempotency.IdempotencyConflictError` (or waits, see ``wait``);
    the same key with different arguments gets
    :class:`~resilience.idempotency.IdempotencyKeyMismatchError`.

    Parameters:
        store: where claims and outcomes live: ``MemoryStore``, ``SQLiteStore``,
            ``RedisStore``, ``PostgresStore`` or your own ``IdempotencyStore``.
        key: the name of the function's parameter that carries the key, or a function
            of the call's arguments returning it (``None``: no key). At most
            ``max_key_length`` printable ASCII characters. A parameter name is resolved
            from the signature of what the guard wraps: make the guard the innermost
            strategy of a pipeline, or pass the key by keyword, or use a function.
        ttl: how long an outcome is replayed, seconds or ``timedelta`` ``> 0``;
            default 24 hours.
        lease: how long a claim holds without finishing, ``> 0``; default 60 s. A call
            that dies leaves its key claimed until then; a call that runs longer loses
            its claim (another call may run) unless ``heartbeat`` renews it.
        heartbeat: renew the lease every ``lease / 3`` while the call runs (a thread
            for sync calls, a task for async ones); default ``False``.
        wait: seconds ``>= 0`` a call waits for a running duplicate's outcome before
            answering with the conflict error; default ``None`` (answer at once). Never
            beyond the caller's deadline.
        poll_interval: seconds between claims while waiting, ``> 0`` and ``<= 60``;
            default 0.05.
        fingerprint: what must match for a replay. Default: a SHA-256 of the
            canonicalised arguments, leaving out the key parameter and a first
            ``self``/``cls``. A function of the call's arguments (its return value is
            hashed), or ``None`` to turn the check off.
        scope: the tenant or principal that owns the key: a string, or a function of
            the call's arguments. Keys of different scopes never meet.
        namespace: prefix of the stored keys; default: the policy name (the
            function's qualified name when used alone, the pipeline's name inside one).
        required: ``True`` (default): a call without a key raises
            :class:`~resilience.idempotency.IdempotencyKeyError`; ``False``: it runs
            unguarded.
        on_unknown_failure: ``"release"`` (default): an unknown failure (see
            ``classifier``) releases the key, so a retry runs the call again;
            ``"store"``: it is stored and replayed like a known failure.
        on_store_error: ``"fail_closed"`` (default): a store that fails before the call
            raises :class:`~resilience.idempotency.IdempotencyStoreError`;
            ``"fail_open"``: the call runs unguarded and an ``IdempotencyStoreFailed``
            event is published.
        classifier: splits failures into known (stored and replayed) and unknown;
            default: every exception is unknown. Its ``known`` types are also the
            exception types rebuilt on replay.
        codec: encodes stored outcomes; default :class:`~resilience.idempotency.JsonCodec`.
        replay_errors: further exception types rebuilt on replay (see below).
        max_key_length: ``1 <= n <= 4096``; default 255.
        name: the policy name when used alone.
        clock: the clock for waiting (tests).

    A known failure is stored as its type name, base type names and message. On replay
    the most derived of those types that is in ``classifier.known`` or
    ``replay_errors`` is called with the message; any other stored failure is raised as
    :class:`~resilience.idempotency.ReplayedError`. No type is ever looked up by name.
    """

    kind: ClassVar[str] = "idempotency"
    __slots__ = (
        "_allowed_errors",
        "_classifier",
        "_codec",
        "_fingerprint",
        "_guard",
        "_key",
        "_namespace",
        "_required",
        "_scope",
        "_store_unknown",
    )

    def __init__(
        self,
        *,
        store: IdempotencyStore,
        key: str | KeyFunction,
        ttl: float | timedelta = 86_400.0,
        lease: float | timedelta = 60.0,
        heartbeat: bool = False,
        wait: float | timedelta | None = None,
        poll_interval: float | timedelta = 0.05,
        fingerprint: Callable[..., Any] | Unset | None = UNSET,
        scope: str | Callable[..., str | None] | None = None,
        namespace: str | None = None,
        required: bool = True,
        on_unknown_failure: Literal["release", "store"] = "release",
        on_store_error: Literal["fail_closed", "fail_open"] = "fail_closed",
        classifier: Classifier | None = None,
        codec: Codec | None = None,
        replay_errors: tuple[type[BaseException], ...] = (),
        max_key_length: int = DEFAULT_MAX_KEY_LENGTH,
        name: str | None = None,
        clock: Clock | None = None,
    ) -> None:
        super().__init__(name=name)
        self._guard = Guard(
            guard_options(
                store=store,
                ttl=ttl,
                lease=lease,
                heartbeat=heartbeat,
                wait=wait,
                poll_interval=poll_interval,
                on_store_error=on_store_error,
                max_key_length=max_key_length,
                clock=clock,
            )
        )
        if isinstance(key, str):
            if not key.isidentifier():
                raise ValueError(f"key must be a parameter name or a function, got {key!r}")
        elif not callable(key):
            raise TypeError(f"key must be a parameter name (str) or a function, got {key!r}")
        self._key = key
        if not (fingerprint is UNSET or fingerprint is None or callable(fingerprint)):
            raise TypeError(f"fingerprint must be a function or None, got {fingerprint!r}")
        self._fingerprint = fingerprint
        if not (scope is None or callable(scope) or (isinstance(scope, str) and scope)):
            raise TypeError(f"scope must be a non-empty str, a function or None, got {scope!r}")
        self._scope = scope
        if namespace is not None and not (isinstance(namespace, str) and namespace):
            raise TypeError(f"namespace must be a non-empty str or None, got {namespace!r}")
        self._namespace = namespace
        if not isinstance(required, bool):
            raise TypeError(f"required must be a bool, got {required!r}")
        self._required = required
        if on_unknown_failure not in UNKNOWN_FAILURE_POLICIES:
            raise ValueError(
                "on_unknown_failure must be one of "
                f"{', '.join(map(repr, UNKNOWN_FAILURE_POLICIES))}, got {on_unknown_failure!r}"
            )
        self._store_unknown = on_unknown_failure == "store"
        if classifier is not None and not isinstance(classifier, Classifier):
            raise TypeError(f"classifier must be a Classifier or None, got {classifier!r}")
        self._classifier = classifier or DEFAULT_CLASSIFIER
        if codec is not None and not isinstance(codec, Codec):
            raise TypeError(f"codec must have name, encode() and decode(), got {codec!r}")
        self._codec: Codec = codec or JsonCodec()
        if not isinstance(replay_errors, tuple) or not all(
            isinstance(t, type) and issubclass(t, BaseException) for t in replay_errors
        ):
            raise TypeError(
                f"replay_errors must be a tuple of exception types, got {replay_errors!r}"
            )
        self._allowed_errors = {
            qualified_name(t): t for t in (*self._classifier.known, *replay_errors)
        }

    @property
    def store(self) -> IdempotencyStore:
        """The store the guard uses."""
        return self._guard.options.store

    def __repr__(self) -> str:
        o = self._guard.options
        return (
            f"Idempotency(store={o.store!r}, key={self._key!r}, ttl={o.ttl:g}, "
            f"lease={o.lease:g}" + (f", name={self.name!r}" if self.name else "") + ")"
        )

    def snapshot(self) -> dict[str, Any]:
        o = self._guard.options
        return {
            "kind": self.kind,
            "name": self.name,
            "store": type(o.store).__name__,
            "ttl": o.ttl,
            "lease": o.lease,
            "heartbeat": o.heartbeat is not None,
            "wait": o.wait,
            "on_unknown_failure": "store" if self._store_unknown else "release",
            "on_store_error": "fail_open" if o.fail_open else "fail_closed",
            "codec": self._codec.name,
        }

    # -- settled at decoration time ---------------------------------------------------------
    def _check_sync(self, fn: AnyCallable) -> None:
        if not self._guard.options.store.supports_sync:
            raise TypeError(
                f"{self._guard.options.store!r} has no sync methods (it was built on an "
                f"asyncio client); it cannot guard the sync function {fn!r}"
            )

    def _parts(self, fn: AnyCallable) -> tuple[_Parts, _Parts, _Parts]:
        """Three functions of ``(args, kwargs)``: the key, the fingerprint, the scope."""
        try:
            sig: inspect.Signature | None = inspect.signature(fn)
        except (TypeError, ValueError):
            sig = None
        params = list(sig.parameters.values()) if sig is not None else []
        generic = all(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params)
        excluded: set[str] = set()
        if params and params[0].name in ("self", "cls") and not generic:
            excluded.add(params[0].name)

        key = self._key
        key_of: _Parts
        if isinstance(key, str):
            excluded.add(key)
            name = key
            param = next((p for p in params if p.name == name), None)
            if param is None and not generic:
                raise TypeError(f"key={name!r} is not a parameter of {fn!r}")
            index = (
                params.index(param)
                if param is not None
                and param.kind in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD)
                else None
            )
            default = (
                param.default if param is not None and param.default is not param.empty else None
            )

            def key_of(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
                if name in kwargs:
                    return kwargs[name]
                if index is not None and index < len(args):
                    return args[index]
                return default

        else:
            key_fn = key

            def key_of(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
                return key_fn(*args, **kwargs)

        fp = self._fingerprint
        fp_of: _Parts
        if fp is None:

            def fp_of(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
                return ""

        elif isinstance(fp, Unset):
            if sig is not None and not generic:
                bind = sig.bind
                simple = all(p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) for p in params)
                positional = [p.name for p in params if p.kind is p.POSITIONAL_OR_KEYWORD]
                known = frozenset(p.name for p in params)
                defaults = {
                    p.name: p.default
                    for p in params
                    if p.default is not p.empty and p.name not in excluded
                }

                def fp_of(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
                    if simple and len(args) <= len(positional) and known.issuperset(kwargs):
                        # The common shape, bound by hand: inspect's bind is the slow part.
                        items = dict(defaults)
                        items.update(zip(positional, args, strict=False))
                        items.update(kwargs)
                    else:
                        bound = bind(*args, **kwargs)
                        bound.apply_defaults()
                        items = bound.arguments
                    return fingerprint_of({k: v for k, v in items.items() if k not in excluded})

            else:

                def fp_of(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
                    rest = {k: v for k, v in kwargs.items() if k not in excluded}
                    return fingerprint_of(list(args), rest)

        else:
            fp_fn = fp

            def fp_of(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
                return fingerprint_of(fp_fn(*args, **kwargs))

        scope = self._scope
        scope_of: _Parts
        if scope is None or isinstance(scope, str):
            constant = scope

            def scope_of(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
                return constant

        else:
            scope_fn = scope

            def scope_of(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
                value = scope_fn(*args, **kwargs)
                if value is not None and not isinstance(value, str):
                    raise TypeError(f"the scope function must return a str or None, got {value!r}")
                return value

        return key_of, fp_of, scope_of

    # -- decisions on outcomes (no I/O) -----------------------------------------------------
    def _result_payload(self, result: Any) -> tuple[bytes | None, str]:
        """The bytes to store for a returned value, or ``None`` and why not."""
        try:
            outcome = self._classifier.classify_result(result)
            if outcome is Outcome.UNKNOWN_FAILURE and not self._store_unknown:
                return None, "unknown_failure"
            return self._codec.encode({"v": _FORMAT, "result": result}), ""
        except Exception:
            return None, "not_encodable"

    def _error_payload(self, exc: BaseException) -> tuple[bytes | None, str]:
        """The bytes to store for a raised exception, or ``None`` and why not."""
        try:
            outcome = self._classifier.classify_exception(exc)
            if outcome is Outcome.UNKNOWN_FAILURE and not self._store_unknown:
                return None, "unknown_failure"
            return self._codec.encode({"v": _FORMAT, "error": error_record(exc)}), ""
        except Exception:
            return None, "not_encodable"

    def _replay(self, got: Completed, scope: Scope, key: str) -> Any:
        """The stored result, or raise the stored failure."""
        try:
            envelope = self._codec.decode(got.payload)
            if not isinstance(envelope, dict) or envelope.get("v") != _FORMAT:
                raise ValueError("not a stored outcome")
        except Exception as exc:
            raise IdempotencyStoreError(
                f"the outcome stored for this key cannot be decoded with {self._codec!r}",
                policy=scope.policy,
                key=key,
            ) from exc
        if "error" not in envelope:
            self._guard.replayed(scope, key, None)
            return envelope.get("result")
        record = envelope["error"]
        if not isinstance(record, dict):
            record = {}
        type_name = str(record.get("type", "Exception"))
        self._guard.replayed(scope, key, type_name)
        error = rebuild_error(record, self._allowed_errors)
        if error is None:
            error = ReplayedError(
                type_name, str(record.get("message", "")), policy=scope.policy, key=key
            )
        _add_note(error, f"resilience: replayed the failure stored for idempotency key {key!r}")
        raise error

    def _prepare(
        self,
        parts: tuple[_Parts, _Parts, _Parts],
        namespace: str,
        scope: Scope,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> tuple[str, str, str] | None:
        """``(key, store key, fingerprint)``, or ``None`` to run unguarded (no key)."""
        key_of, fp_of, scope_of = parts
        raw = key_of(args, kwargs)
        if raw is None and not self._required:
            return None
        key = check_key(raw, self._guard.options.max_key_length, scope.policy)
        return key, make_store_key(namespace, scope_of(args, kwargs), key), fp_of(args, kwargs)

    # -- drivers ----------------------------------------------------------------------------
    def _wrap_sync(self, fn: AnyCallable, scope: Scope) -> AnyCallable:
        self._check_sync(fn)
        parts = self._parts(fn)
        namespace = self._namespace or scope.policy
        guard = self._guard
        prepare, replay = self._prepare, self._replay
        result_payload, error_payload = self._result_payload, self._error_payload
        beat = guard.options.heartbeat is not None

        def idempotent(*args: Any, **kwargs: Any) -> Any:
            call = prepare(parts, namespace, scope, args, kwargs)
            if call is None:
                return fn(*args, **kwargs)
            key, skey, fp = call
            entry = guard.begin(scope, key, skey, fp)
            if entry is None:  # the store failed and the guard fails open
                return fn(*args, **kwargs)
            if isinstance(entry, Completed):
                return replay(entry, scope, key)
            ticket: Ticket = entry
            try:
                if beat:
                    guard.start_beat(ticket)
                result = fn(*args, **kwargs)
            except Exception as exc:
                guard.settle(ticket, *error_payload(exc))
                raise
            except BaseException:
                # KeyboardInterrupt, SystemExit …: the call did not finish; free the key.
                guard.settle(ticket, None, "cancelled")
                raise
            guard.settle(ticket, *result_payload(result))
            return result

        return idempotent

    def _wrap_async(self, fn: AsyncCallable, scope: Scope) -> AsyncCallable:
        if not self._guard.options.store.supports_async:
            raise TypeError(f"{self._guard.options.store!r} has no async methods")
        parts = self._parts(fn)
        namespace = self._namespace or scope.policy
        guard = self._guard
        prepare, replay = self._prepare, self._replay
        result_payload, error_payload = self._result_payload, self._error_payload
        beat = guard.options.heartbeat is not None

        async def idempotent(*args: Any, **kwargs: Any) -> Any:
            call = prepare(parts, namespace, scope, args, kwargs)
            if call is None:
                return await fn(*args, **kwargs)
            key, skey, fp = call
            entry = await guard.abegin(scope, key, skey, fp)
            if entry is None:  # the store failed and the guard fails open
                return await fn(*args, **kwargs)
            if isinstance(entry, Completed):
                return replay(entry, scope, key)
            ticket: Ticket = entry
            try:
                if beat:
                    guard.astart_beat(ticket)
                result = await fn(*args, **kwargs)
            except Exception as exc:
                await guard.asettle(ticket, *error_payload(exc))
                raise
            except BaseException:
                # Cancellation: the call did not finish; free the key (shielded).
                await guard.asettle(ticket, None, "cancelled")
                raise
            await guard.asettle(ticket, *result_payload(result))
            return result

        return idempotent
