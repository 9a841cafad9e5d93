"""The r3mem HTTP service (FastAPI): token-authenticated sessions with write, recall, answer and chat.

    from r3mem.service import create_app
    app = create_app(engine, MemoryStore("chats.db"), admin_token="…")   # then: uvicorn.run(app)

`r3mem serve` runs it; `serve_in_thread(app)` serves it from a background thread of this process.
The OpenAPI schema is served at /openapi.json, interactive docs at /docs.
"""

__all__ = ["create_app", "serve_in_thread", "ApiError"]

_LAZY = {"create_app": "r3mem.service.app", "serve_in_thread": "r3mem.service.background",
         "ApiError": "r3mem.service.errors"}


def __getattr__(name: str):
    # Lazy so that `r3mem.service.schemas` (what the HTTP client shares) does not import the model side.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
