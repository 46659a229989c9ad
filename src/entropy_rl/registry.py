"""One registry type for everything looked up by name: objectives, advantage estimators, rollout backends,
evaluation sets, prompt templates, tasks, training sources and rewards.

* A duplicate name raises ``ValueError`` at registration (never a silent overwrite, unlike verl's registries).
* An unknown name raises :class:`UnknownNameError`, one error type that names the kind, the name asked for and
  every valid name. It is a :class:`~entropy_rl.config.ConfigError` (a bad value in params.yaml) and a ``KeyError``.
* A registry whose names ``config`` validates (``declared``) refuses a name ``config`` does not know, so the two
  lists cannot drift apart; :meth:`Registry.check_complete` says which declared names nothing registered.

``config`` imports nothing of the package: it holds the declared name lists, and the module that owns a registry
passes them here.
"""
from __future__ import annotations

from typing import Generic, Iterable, Iterator, TypeVar

from .config import ConfigError

T = TypeVar("T")


class UnknownNameError(ConfigError, KeyError):
    """A name that no entry of a registry has; the message lists the valid names."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class Registry(Generic[T]):
    """Entries of one kind by name, in registration order."""

    def __init__(self, kind: str, declared: Iterable[str] | None = None, declared_in: str = ""):
        self.kind = kind
        self._entries: dict[str, T] = {}
        self.declared = tuple(declared) if declared is not None else None
        self.declared_in = declared_in

    def register(self, name: str, entry: T | None = None):
        """``registry.register(name, entry)``, or ``@registry.register(name)`` as a decorator."""
        if entry is None:
            return lambda obj: self.register(name, obj)
        if name in self._entries:
            raise ValueError(f"{self.kind} '{name}' is registered twice")
        if self.declared is not None and name not in self.declared:
            raise ValueError(f"{self.kind} '{name}' is not declared in {self.declared_in or 'entropy_rl.config'} "
                             f"(declared: {', '.join(self.declared)}); add it there so that params.yaml accepts it")
        self._entries[name] = entry
        return entry

    def get(self, name: str) -> T:
        if name not in self._entries:
            raise UnknownNameError(f"unknown {self.kind} '{name}'; valid: {', '.join(self._entries) or '(none)'}")
        return self._entries[name]

    __getitem__ = get

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def items(self):
        return self._entries.items()

    def values(self):
        return self._entries.values()

    def check_complete(self) -> None:
        """Raise when a declared name has no entry (a test calls this for every registry)."""
        missing = [n for n in (self.declared or ()) if n not in self._entries]
        if missing:
            raise ValueError(f"{self.kind}: declared but not registered: {', '.join(missing)}")

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._entries)})"


ALL: list[Registry] = []
"""every registry made by :func:`registry` (the tests check each one)"""


def registry(kind: str, declared: Iterable[str] | None = None, declared_in: str = "") -> Registry:
    """A new :class:`Registry`, recorded in :data:`ALL`."""
    reg: Registry = Registry(kind, declared, declared_in)
    ALL.append(reg)
    return reg

