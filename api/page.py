"""The page people ask from: ``GET /`` and its two assets, shipped in the package.

Plain HTML, CSS and JavaScript from ``api/static`` (package data): no build step, no CDN,
and a Content-Security-Policy that lets the page load or call nothing but this API.
"""

from __future__ import annotations

from importlib.resources import files

from flask import Blueprint, Response, abort

#: file name -> content type; nothing else is served
ASSETS = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
          "style.css": "text/css; charset=utf-8"}
#: the page's paths: open like /health (the page itself holds no data; /qa keeps its token)
PATHS = ("/", *(f"/page/{name}" for name in ASSETS if name != "index.html"))
POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
          "img-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")

page = Blueprint("page", __name__)


def _asset(name: str) -> Response:
    body = files("api").joinpath("static", name).read_bytes()
    response = Response(body, content_type=ASSETS[name])
    response.headers["Content-Security-Policy"] = POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Cache-Control"] = "no-cache"
    return response


@page.get("/")
def index() -> Response:
    return _asset("index.html")


@page.get("/page/<name>")
def asset(name: str) -> Response:
    if name not in ASSETS or name == "index.html":
        abort(404)
    return _asset(name)
