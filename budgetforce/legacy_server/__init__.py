"""budgetforce's OpenAI-compatible server: `build_app(settings, engine=None)`."""

from budgetforce.legacy_server.settings import ServerSettings

__all__ = ["ServerSettings", "build_app"]


def __getattr__(name: str):  # the app pulls in FastAPI and the engine: import it only when asked for
    if name == "build_app":
        from budgetforce.legacy_server.app import build_app

        return build_app
    raise AttributeError(name)
