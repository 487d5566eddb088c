"""One router per feature."""

from budgetforce.legacy_server.routes import chat, completions, health, models

ROUTERS = (chat.router, completions.router, models.router, health.router)
