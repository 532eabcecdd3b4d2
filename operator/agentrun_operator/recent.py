"""A bounded memory of recent keys: what this process did lately, without growing for good."""

from __future__ import annotations

import collections
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class Recent(Generic[K]):
    """The last ``size`` keys added (the oldest forgotten first); ``key in recent``."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._keys: collections.OrderedDict[K, None] = collections.OrderedDict()

    def add(self, key: K) -> None:
        self._keys[key] = None
        while len(self._keys) > self._size:
            self._keys.popitem(last=False)

    def __contains__(self, key: object) -> bool:
        return key in self._keys
