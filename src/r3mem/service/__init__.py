"""The r3mem HTTP service (FastAPI): token-authenticated sessions with write, recall, answer and chat.

    from r3mem.service import create_app
    app = create_app(engine, MemoryStore("chats.db"), admin_token="…")   # then: uvicorn.run(app)

`r3mem serve` runs it; `serve_in_thread(app)` serves it from a background thread of this process.
The OpenAPI schema is served at /openapi.json, interactive docs at /docs.
"""

from r3mem.service.app import create_app
from r3mem.service.background import serve_in_thread
from r3mem.service.errors import ApiError

__all__ = ["create_app", "serve_in_thread", "ApiError"]
