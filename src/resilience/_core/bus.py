"""The event bus: who listens to which policy, and delivery that never breaks a call.

Kept apart from the event classes (:mod:`resilience._core.events`, frozen dataclasses)
so that subscribing, and a hot path asking whether anyone listens, load neither
``dataclasses`` nor ``typing``: ``import resilience`` stays cheap.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager

TYPE_CHECKING = False  # ``typing.TYPE_CHECKING`` without importing ``typing``
if TYPE_CHECKING:
    from collections.abc import Iterator

    from .events import Event, Listener

__all__ = ["EventBus", "EVENTS", "subscribe", "unsubscribe"]


class EventBus:
    """Delivers events to the listeners of their policy and to the global ones.

    Subscribing copies the listener tuples (copy-on-write), so publishing takes no lock.
    """

    __slots__ = ("_all", "_by_policy", "_failed", "_lock", "active")

    def __init__(self) -> None:
        self._all: tuple[Listener, ...] = ()
        self._by_policy: dict[str, tuple[Listener, ...]] = {}
        self._failed: set[Listener] = set()
        self._lock = threading.Lock()
        self.active = False
        """Whether any listener is subscribed at all. Hot paths read it before calling
        :meth:`wants`: with no listener anywhere, one attribute read and no call."""

    def subscribe(self, listener: Listener, *, policy: str | None = None) -> None:
        """Send ``listener`` every event (``policy=None``) or those of one policy."""
        if not callable(listener):
            raise TypeError(f"listener must be callable, got {listener!r}")
        with self._lock:
            if policy is None:
                self._all = (*self._all, listener)
            else:
                self._by_policy[policy] = (*self._by_policy.get(policy, ()), listener)
            self.active = True

    def unsubscribe(self, listener: Listener, *, policy: str | None = None) -> None:
        """Stop sending events to ``listener``; unknown listeners are ignored.

        Listeners are matched by equality, not identity: ``obj.method`` is a new object
        each time it is read, but equal to the one that was subscribed.
        """
        with self._lock:
            # ``==`` rather than ``is``: a bound method is a new object at every access.
            if policy is None:
                self._all = tuple(x for x in self._all if x != listener)
            else:
                rest = tuple(x for x in self._by_policy.get(policy, ()) if x != listener)
                if rest:
                    self._by_policy[policy] = rest
                else:
                    self._by_policy.pop(policy, None)
            self._failed.discard(listener)
            self.active = bool(self._all or self._by_policy)

    @contextmanager
    def subscribed(self, listener: Listener, *, policy: str | None = None) -> Iterator[None]:
        """Subscribe for the duration of a ``with`` block."""
        self.subscribe(listener, policy=policy)
        try:
            yield
        finally:
            self.unsubscribe(listener, policy=policy)

    def wants(self, policy: str) -> bool:
        """Whether publishing an event of ``policy`` would reach anyone."""
        return bool(self._all) or policy in self._by_policy

    def publish(self, event: Event) -> None:
        """Deliver ``event``; listener errors are logged once and swallowed."""
        for listener in self._all:
            self._deliver(listener, event)
        for listener in self._by_policy.get(event.policy, ()):
            self._deliver(listener, event)

    def _deliver(self, listener: Listener, event: Event) -> None:
        try:
            listener(event)
        except Exception:
            if listener not in self._failed:
                self._failed.add(listener)
                import logging  # imported when first needed: ``import resilience`` stays cheap

                logging.getLogger("resilience").exception(
                    "resilience: event listener %r raised; the call goes on and further "
                    "errors from this listener are not logged",
                    listener,
                )


EVENTS = EventBus()


def subscribe(listener: Listener, *, policy: str | None = None) -> None:
    """Subscribe ``listener`` to the events of every policy, or of ``policy`` only."""
    EVENTS.subscribe(listener, policy=policy)


def unsubscribe(listener: Listener, *, policy: str | None = None) -> None:
    """Undo :func:`subscribe`."""
    EVENTS.unsubscribe(listener, policy=policy)
