"""Shared state that views observe (the workbench's ``WorkbenchState``, the comparison window's
``ComparisonState``): one user action is one ``Change`` delivered once to each observer, and writes
made by an observer while a change is being delivered are refused (``_writable``), so a view that
reacts to a change never bounces it back and views never call each other."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

Observer = Callable[["Change"], None]


@dataclass(frozen=True)
class Change:
    what: str
    source: str = ""  # the view that caused it ("" = the application)


@dataclass
class Observable:
    _observers: list[Observer] = field(default_factory=list, repr=False, kw_only=True)
    _delivering: bool = field(default=False, repr=False, kw_only=True)

    def subscribe(self, observer: Observer) -> None:
        self._observers.append(observer)

    def unsubscribe(self, observer: Observer) -> None:
        if observer in self._observers:
            self._observers.remove(observer)

    def _emit(self, what: str, source: str) -> None:
        change = Change(what, source)
        self._delivering = True
        try:
            for obs in list(self._observers):
                obs(change)
        finally:
            self._delivering = False

    def _writable(self) -> bool:
        return not self._delivering
