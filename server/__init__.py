"""Old import path of the legacy server, kept for the repository only (not installed): `server.x` is
`budgetforce.legacy_server.x`. The server itself moved into the package (`budgetforce serve
--legacy-server`); `budgetforce serve` now runs vLLM's own server (`budgetforce.serving`).
Remove this alias once nothing in the repository imports `server`.
"""

import importlib
import sys

_MODULES = ("app", "errors", "generation", "metrics", "middleware", "protocol", "routes", "settings")
for _name in _MODULES:
    _module = importlib.import_module(f"budgetforce.legacy_server.{_name}")
    sys.modules[f"{__name__}.{_name}"] = _module
    globals()[_name] = _module

from budgetforce.legacy_server import ServerSettings, build_app  # noqa: E402,F401
