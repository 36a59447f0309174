"""Name -> class tables: how a preset's ``positions:``, ``switch:`` and ``memory:`` find their mechanism.

As with diffusers' schedulers and attention processors, a mechanism is a class with a fixed interface (the base
class of its kind, :mod:`streamgen.cache.mechanisms`) that is found by name. Registering a class, from inside the
package or outside it, is all a preset needs to name it, and all the shared test battery needs to play it.
"""

from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

Mechanism = TypeVar("Mechanism", bound=type)


class Registry(Generic[Mechanism]):
    """The registered classes of one kind, by name, in registration order.

    ``key`` is the preset key that names them (``switch``): unknown names are reported under it.
    """

    def __init__(self, key: str, base: type):
        self.key = key
        self.base = base
        self._classes: dict[str, type] = {}

    def register(self, name: str) -> Callable[[Mechanism], Mechanism]:
        """A class decorator: presets may name the decorated class ``name``."""

        def add(cls: Mechanism) -> Mechanism:
            if not (isinstance(cls, type) and issubclass(cls, self.base)):
                raise TypeError(f"{self.key} {name!r} must be a subclass of {self.base.__name__}, got {cls!r}")
            if name in self._classes:
                raise ValueError(f"{self.key} {name!r} is already registered ({self._classes[name].__qualname__})")
            self._classes[name] = cls
            return cls

        return add

    def __getitem__(self, name: str) -> type:
        if name not in self._classes:
            raise ValueError(f"unknown {self.key} {name!r}; known: {list(self._classes)}")
        return self._classes[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._classes)

    def items(self) -> list[tuple[str, type]]:
        return list(self._classes.items())
