"""Code named "module:attribute", imported when it is first called.

The command line names each command's handler this way, so building its parsers (for
`--help`, say) imports none of the code, drivers or SDKs the commands use.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Lazy:
    target: str  # "package.module:attribute"

    def load(self) -> Any:
        module, _, attribute = self.target.partition(":")
        return getattr(importlib.import_module(module), attribute)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.load()(*args, **kwargs)
