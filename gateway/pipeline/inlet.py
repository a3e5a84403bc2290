"""Where a running pipeline's input is pushed: a ``Subject`` for one thread.

reactivex's ``Subject`` takes a lock and copies its observer list on every item, for callers
on many threads. A pipeline is fed on the event loop thread only, so ``Inlet`` keeps its
observers' ``on_next`` in a tuple that subscribing replaces: pushing an item is a loop over
that tuple (about 0.4 µs instead of 3.8 µs per item through a ``Subject`` on the development
box). Completion and errors behave as a ``Subject``'s: they go to every observer once, and
later items are ignored.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from reactivex import Observable, abc
from reactivex.disposable import Disposable

T = TypeVar("T")


class Inlet(Observable[T]):
    """An observable that is also the observer its input is pushed into."""

    def __init__(self) -> None:
        super().__init__()
        self._observers: tuple[abc.ObserverBase[T], ...] = ()
        self._pushes: tuple[Callable[[T], None], ...] = ()
        self._stopped = False

    def _subscribe_core(
        self, observer: abc.ObserverBase[T], scheduler: abc.SchedulerBase | None = None
    ) -> abc.DisposableBase:
        if self._stopped:
            observer.on_completed()
            return Disposable()
        self._set((*self._observers, observer))

        def unsubscribe() -> None:
            self._set(tuple(o for o in self._observers if o is not observer))

        return Disposable(unsubscribe)

    def _set(self, observers: tuple[abc.ObserverBase[T], ...]) -> None:
        self._observers = observers
        self._pushes = tuple(o.on_next for o in observers)

    def on_next(self, value: T) -> None:
        for push in self._pushes:
            push(value)

    def on_completed(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        observers = self._observers
        self._set(())
        for observer in observers:
            observer.on_completed()

    def on_error(self, error: Exception) -> None:
        if self._stopped:
            return
        self._stopped = True
        observers = self._observers
        self._set(())
        for observer in observers:
            observer.on_error(error)
