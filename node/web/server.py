"""The node's web server: Hypercorn (trio worker) serving a Starlette app, in the node's nursery.

Routes (all behind ``security.Guard``: Host check, token cookie, same-origin writes)::

    GET  /                       the single-page app (labeling, requester pages, dashboard)
    GET  /static/...             its modules, styles and icons (shipped in the package)
    POST /api/METHOD             an RPC method of WEB_METHODS, params as a JSON object:
                                 {"result": ...} or {"error": {code, message, data}}
    GET  /api/events             server-sent events: a "tick" with the node's counters and
                                 each task's message count whenever they change
    GET  /blob/TASK/ITEM         an item's bytes (image, audio, ...), fetched from peers if needed
    POST /upload                 the request body stored as a blob -> {sha256, size, media_type}
    GET  /export/TASK?format=F   task_export as a file download (jsonl, csv, labelstudio)

The HTTP layer adds no logic of its own to the node's: ``/api/METHOD`` calls the function of
the RPC method table (``node.rpc.methods.METHODS``), ``/blob`` calls ``blob_get``, ``/export``
``task_export``, ``/upload`` the helper behind ``blob_put``. Keys never leave the node: the
page names one of the node's accounts and the node signs, as the CLI does.

Limits: a JSON body of at most MAX_JSON_BODY bytes (413 above), an upload of at most the
network's max_blob_bytes, MAX_EVENT_CLIENTS event streams at once (503 above), request
heads of 16 KiB (Hypercorn's h11 limit).
"""
from __future__ import annotations

import json
import logging
import re
from functools import partial
from pathlib import Path

import trio

from ..errors import NodeError
from ..config import parse_http_listen
from .security import Guard, csrf_value, is_loopback, new_token

log = logging.getLogger("labelmesh.web")

STATIC = Path(__file__).parent / "static"
MAX_JSON_BODY = 16 << 20
MAX_EVENT_CLIENTS = 32
EVENT_INTERVAL_S = 1.0
EVENT_KEEPALIVE_S = 15.0
#: tasks whose message counts a tick carries (the newest)
EVENT_TASKS = 200

#: RPC methods a page may call. Not here: backup_create (writes where the caller says),
#: messages_arrival and blob_read (tools), ui_url (the token itself), stop (the daemon's
#: life is the operator's), blob_import (makes the node read local files); task_post refuses
#: {"file": path} items from a browser (see _check_params).
WEB_METHODS = frozenset({
    "node_info", "peers_list", "sync_status", "rpc_methods", "tasks_list", "task_get", "task_items", "worklist",
    "task_post", "annotations_submit", "annotations_list", "consensus_get", "certificate_get", "gold_reveal",
    "rewards_get", "reputation_get", "task_export", "account_list", "blob_get", "blob_put",
    "balance_get", "ledger_history",  # once the ledger provides them (absent methods answer 404)
})
#: methods whose results may be big (pages of up to 10,000 entries): JSON-encoded off the loop
_BIG_RESULTS = frozenset({"task_get", "consensus_get", "annotations_list", "task_export"})

_HTTP_STATUS = {-32700: 400, -32600: 400, -32601: 404, -32602: 400, -32603: 500, -32000: 409, -32001: 404,
                -32002: 422, -32003: 507, -32004: 503}
_MEDIA_TYPE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,63}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,63}$")
_INLINE_TYPES = ("image/", "audio/", "video/", "text/plain")


class WebError(NodeError):
    """The web UI cannot start as configured (address, port); the message says what to change."""


class WebServer:
    """Serves the web UI of ``node`` on ``listen`` (HOST:PORT) until cancelled.

    ``allow_remote``: bind a non-loopback address (refused otherwise; a warning is logged:
    the UI is then reachable by anyone who can reach the port, without TLS)."""

    def __init__(self, node, listen: str, *, allow_remote: bool = False):
        self.node = node
        self.listen = listen
        self.host, self.port = parse_http_listen(listen)
        if not is_loopback(self.host) and not allow_remote:
            raise WebError(f"refusing to serve the web UI on {listen}: not a loopback address. Anyone who can reach "
                           "it could try the token, and there is no TLS. Use 127.0.0.1 (and an SSH tunnel or a "
                           "reverse proxy with TLS), or pass --http-allow-remote to bind it anyway.")
        self.allow_remote = allow_remote
        self.token = new_token()
        self.url: str | None = None
        self.login_url: str | None = None
        self.guard: Guard | None = None
        self.event_clients = 0
        self._tick: tuple[float, dict] | None = None

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        from hypercorn.config import Config
        from hypercorn.trio import serve

        config = Config()
        config.bind = [f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"]
        config.accesslog = None
        config.errorlog = log
        config.include_server_header = False
        config.graceful_timeout = 1.0
        config.keep_alive_timeout = 30
        self.guard = Guard(build_app(self), token=self.token, host=self.host, port=self.port)
        try:
            async with trio.open_nursery() as nursery:
                binds = await nursery.start(partial(serve, self.guard, config))
                self._started(binds, task_status)
        except BaseExceptionGroup as eg:  # Hypercorn's nurseries wrap a failed bind
            bind_error, rest = eg.split(OSError)
            if rest is not None or bind_error is None:
                raise
            while isinstance(bind_error, BaseExceptionGroup):
                bind_error = bind_error.exceptions[0]
            raise WebError(f"cannot serve the web UI on {self.listen}: {bind_error.strerror or bind_error}") from None

    def _started(self, binds: list[str], task_status) -> None:
        self.port = int(binds[0].rsplit(":", 1)[1])
        self.guard.set_port(self.port)  # port 0 picked one: the Host check needs it
        shown = f"[{self.host}]" if ":" in self.host else self.host
        self.url = f"http://{shown}:{self.port}/"
        self.login_url = f"{self.url}?token={self.token}"
        self.node.web = self
        if not is_loopback(self.host):
            log.warning("web UI on a non-loopback address %s (--http-allow-remote): anyone who reaches it can "
                        "try the token, and there is no TLS", self.listen)
        log.info("web UI at %s (run `labelmesh ui` for the URL with its token)", self.url)
        task_status.started(self)

    def tick(self) -> dict:
        """The node's counters for the event stream, computed at most once per interval
        whatever the number of clients."""
        now = trio.current_time()
        if self._tick is not None and now - self._tick[0] < EVENT_INTERVAL_S / 2:
            return self._tick[1]
        from ..services.metrics import task_state_counts

        node = self.node
        c = node.counters
        newest = sorted(node.tasks.items(), key=lambda kv: -kv[1].created_at)[:EVENT_TASKS]
        snap = {"peers": len(node.p2p.peers()) if node.p2p is not None else 0,
                "stored": node.store.count(), "accepted": c.accepted, "rejected": c.rejected,
                "ignored": c.ignored, "duplicates": c.duplicates, "tasks_by_state": task_state_counts(node),
                "tasks": {tid.hex(): len(node.task_index.ids.get(tid, ())) for tid, _ in newest},
                "certified": sorted(tid.hex() for tid, _ in newest if node.finality.is_certified(tid))}
        self._tick = (now, snap)
        return snap


def build_app(web: WebServer):
    """The Starlette app of ``web`` (routes in the module docstring)."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response, StreamingResponse
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    from ..rpc.errors import INVALID_PARAMS, RpcError
    from ..rpc.methods import METHODS
    from ..rpc.methods.labeling import item_bytes_source, store_blob
    from ..rpc.params import task_id_param

    node = web.node
    index_html = (STATIC / "index.html").read_text()

    def error(status: int, code: int, message: str, data=None) -> JSONResponse:
        e = {"code": code, "message": message}
        if data is not None:
            e["data"] = data
        return JSONResponse({"error": e}, status_code=status)

    def rpc_error(e: RpcError) -> JSONResponse:
        return error(_HTTP_STATUS.get(e.code, 500), e.code, e.message, e.data)

    async def index(request: Request):
        html = index_html.replace("{{csrf}}", csrf_value(web.token)).replace("{{network}}", node.genesis.name)
        return HTMLResponse(html, headers={"cache-control": "no-store"})

    async def call(request: Request):
        method = request.path_params["method"]
        fn = METHODS.get(method)
        if method not in WEB_METHODS or fn is None:
            return error(404, -32601, f"unknown method {method!r} (or not served to browsers)")
        body = await _read_body(request, MAX_JSON_BODY)
        if body is None:
            return error(413, -32600, f"request body over {MAX_JSON_BODY} bytes; ask for less")
        try:
            params = json.loads(body or b"{}", parse_constant=_no_constant)
        except (ValueError, UnicodeDecodeError, RecursionError) as e:
            return error(400, -32700, f"body is not JSON: {e}")
        if not isinstance(params, dict):
            return error(400, -32602, "params must be a JSON object")
        try:
            _check_params(method, params)
            result = await fn(node, params)
        except RpcError as e:
            return rpc_error(e)
        except Exception as e:  # a bug must not take the node down: log it, tell the page
            log.exception("web call %s failed", method)
            return error(500, -32603, f"internal error: {type(e).__name__}: {e}")
        if method in _BIG_RESULTS:
            data = await trio.to_thread.run_sync(_dumps, {"result": result})
        else:
            data = _dumps({"result": result})
        return Response(data, media_type="application/json")

    async def events(request: Request):
        if web.event_clients >= MAX_EVENT_CLIENTS:
            return error(503, -32000, f"too many event streams (max {MAX_EVENT_CLIENTS}); close a tab")

        async def stream():
            web.event_clients += 1
            try:
                last, sent_at = None, 0.0
                while True:
                    snap = web.tick()
                    now = trio.current_time()
                    if snap is not last or now - sent_at >= EVENT_KEEPALIVE_S:
                        yield f"event: tick\ndata: {json.dumps({**snap, 'time_ms': node.clock()})}\n\n"
                        last, sent_at = snap, now
                    await trio.sleep(EVENT_INTERVAL_S)
            finally:
                web.event_clients -= 1

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"cache-control": "no-store", "x-accel-buffering": "no"})

    async def blob(request: Request):
        try:
            tid = task_id_param(node, {"task_id": request.path_params["task_id"]})
            item = _int(request.path_params["item"], "item")
            kind, media_type, size, src = item_bytes_source(node, tid, item)
            if kind == "blob":  # the RPC method: makes sure it is here, fetched from peers if needed
                await METHODS["blob_get"](node, {"task_id": tid.hex(), "item": item})
        except RpcError as e:
            return rpc_error(e)
        mt = media_type if _MEDIA_TYPE_RE.match(media_type or "") else "application/octet-stream"
        disposition = "inline" if mt.startswith(_INLINE_TYPES) else "attachment"
        headers = {"content-disposition": f'{disposition}; filename="item-{item}"', "cache-control": "private, max-age=3600"}
        if kind == "bytes":
            return Response(src, media_type=mt, headers=headers)
        return FileResponse(node.blobs.store.path(src), media_type=mt, headers=headers)

    async def upload(request: Request):
        cap = node.params.max_blob_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > cap:
            return error(413, INVALID_PARAMS, f"file of {declared} bytes; this network's max_blob_bytes is {cap}")
        mt = request.query_params.get("media_type") or request.headers.get("content-type", "")
        mt = mt.split(";")[0].strip()
        if not _MEDIA_TYPE_RE.match(mt):
            mt = "application/octet-stream"
        try:
            return JSONResponse({"result": await store_blob(node, request.stream(), mt)})
        except RpcError as e:
            return rpc_error(e)

    async def export(request: Request):
        fmt = request.query_params.get("format", "jsonl")
        try:
            r = await METHODS["task_export"](node, {"task_id": request.path_params["task_id"], "format": fmt})
        except RpcError as e:
            return rpc_error(e)
        ext, mt = {"jsonl": ("jsonl", "application/x-ndjson"), "csv": ("csv", "text/csv"),
                   "labelstudio": ("json", "application/json")}[fmt]
        name = f"labelmesh-{r['task_id'][:12]}-{r['status']}.{ext}"
        return Response(r["content"], media_type=mt, headers={"content-disposition": f'attachment; filename="{name}"'})

    routes = [
        Route("/", index, methods=["GET"]),
        Route("/api/events", events, methods=["GET"]),
        Route("/api/{method}", call, methods=["POST"]),
        Route("/blob/{task_id}/{item}", blob, methods=["GET"]),
        Route("/upload", upload, methods=["POST"]),
        Route("/export/{task_id}", export, methods=["GET"]),
        Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
    ]
    return Starlette(routes=routes)


def _check_params(method: str, params: dict) -> None:
    """What a browser may not ask although the RPC socket's owner may: the node reading a
    local file into a task (a page uploads it with /upload instead)."""
    from ..rpc.errors import INVALID_PARAMS, RpcError

    if method == "task_post" and isinstance(params.get("items"), list) and any(
            isinstance(it, dict) and "file" in it for it in params["items"]):
        raise RpcError(INVALID_PARAMS, "items with 'file' are refused from the web UI: upload the file (/upload) "
                                       "and give its {sha256, size, media_type}")


async def _read_body(request, cap: int) -> bytes | None:
    """The request body, or None once it passes ``cap`` bytes (not read further)."""
    parts, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            return None
        parts.append(chunk)
    return b"".join(parts)


def _int(text: str, name: str) -> int:
    from ..rpc.errors import INVALID_PARAMS, RpcError

    if not text.isdigit() or len(text) > 9:
        raise RpcError(INVALID_PARAMS, f"{name} must be a non-negative integer")
    return int(text)


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _dumps(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()
