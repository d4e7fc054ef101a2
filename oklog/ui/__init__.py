"""The web UI at ``/ui``: static files shipped in the package, served by
every node with a store role.

The files (``static/``) are plain HTML, CSS and JavaScript: no build step,
no external service, nothing fetched from elsewhere.  The page talks to
this node's ``/store/query``, ``/store/histogram`` and ``/store/stream``.
They are read once, when the router is built.
"""

from __future__ import annotations

from importlib import resources

from ..http import Request, Response, Router

__all__ = ["FILES", "ui_router"]

#: file name -> content type; ``index.html`` is served at ``/ui`` and ``/ui/``.
FILES = {
    "index.html": "text/html; charset=utf-8",
    "ui.css": "text/css; charset=utf-8",
    "ui.js": "text/javascript; charset=utf-8",
}

# Same-origin only; no inline script, no frames, no fetches elsewhere.
_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
}


def ui_router() -> Router:
    router = Router()
    static = resources.files(__package__) / "static"
    for name, content_type in FILES.items():
        body = (static / name).read_bytes()

        async def serve(request: Request, body: bytes = body, content_type: str = content_type) -> Response:
            return Response(200, body, dict(_HEADERS), content_type=content_type)

        if name == "index.html":
            router.add("GET", "/ui", serve)
            router.add("GET", "/ui/", serve)
        else:
            router.add("GET", f"/ui/{name}", serve)
    return router
