"""Named registries: configs pick encoders, losses and datasets by name.

An unknown name fails with the list of registered ones, so a typo in a config
is a one-line fix instead of a stack trace.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from mmalign.errors import UsageError

T = TypeVar("T")


class UnknownNameError(UsageError, KeyError):
  """A config asked for a name that no module registered."""

  def __str__(self) -> str:  # KeyError would quote the whole message.
    return str(self.args[0])


class Registry(Generic[T]):
  """Maps names to classes or factories of one kind (e.g. "text encoder")."""

  def __init__(self, kind: str):
    self.kind = kind
    self._entries: dict[str, T] = {}

  def register(self, name: str) -> Callable[[T], T]:
    def decorator(entry: T) -> T:
      if name in self._entries:
        raise ValueError(f"{self.kind} {name!r} is registered twice")
      self._entries[name] = entry
      return entry
    return decorator

  def get(self, name: str, *, config_key: str | None = None) -> T:
    if name not in self._entries:
      where = f" (config key {config_key!r})" if config_key else ""
      raise UnknownNameError(
          f"unknown {self.kind} {name!r}{where}; registered: {', '.join(sorted(self._entries))}")
    return self._entries[name]

  def names(self) -> list[str]:
    return sorted(self._entries)

  def __contains__(self, name: str) -> bool:
    return name in self._entries
