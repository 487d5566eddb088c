"""One router per feature."""

from server.routes import chat, completions, health, models

ROUTERS = (chat.router, completions.router, models.router, health.router)
