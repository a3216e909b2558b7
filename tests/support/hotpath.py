"""The modules the ``sendmail`` hot path must not import (DESIGN.md: start-up budget).

Each of these costs milliseconds at import (or pulls in modules that do);
``sendmail`` starts once per message, so the modules it loads to queue one
must not need them. Tests add what their own path also must not load.
"""

from __future__ import annotations

HEAVY = frozenset(
    {
        "typing",
        "re",
        "dataclasses",
        "enum",
        "json",
        "tomllib",
        "email",
        "ssl",
        "asyncio",
        "socket",
        "logging",
        "pydantic",
        "hashlib",
        "collections",
        "functools",
        "datetime",
        "__future__",
    }
)
