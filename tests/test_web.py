"""The web UI's HTTP layer without a browser (node/web/): token, Host, CSRF, the loopback
rule, every route's answers to bad input, and the RPC methods the pages need."""
from __future__ import annotations

import json
import logging

import httpx
import pytest
import trio

from node.rpc.methods import METHODS as API_METHODS
from node.config import parse_http_listen
from node.app import Node
from node.errors import ConfigError
from node.keystore import Keystore
from node.web import WEB_METHODS, WebError, WebServer
from node.web.security import allowed_hosts, csrf_value
from protocol.genesis import make_genesis

from .helpers import T0, FakeClock, RpcConn, key, make_batch, pk, signed


@pytest.fixture
async def web(short_dir, nursery):
    ks = Keystore(short_dir)
    ks.create("alice", seed=bytes(key(1)))
    ks.create("bob", seed=bytes(key(2)))
    g = make_genesis("web", T0, [(pk(1000), 1)], [], [(pk(1), 10**9)])
    node = Node(short_dir, g, p2p_factory=None, keystore=ks, clock=FakeClock(), rpc_socket=short_dir / "node.sock",
                http_listen="127.0.0.1:0", validator_key=key(1000))  # the one validator: it certifies escrows
    await nursery.start(node.run)
    assert node.web.url == f"http://127.0.0.1:{node.web.port}/"
    return node.web


def origin(web) -> str:
    return f"http://127.0.0.1:{web.port}"


@pytest.fixture
async def client(web):
    """A logged-in client that sends what the app's page sends on writes."""
    async with httpx.AsyncClient(base_url=origin(web), headers={"origin": origin(web),
                                                                "x-labelmesh-csrf": csrf_value(web.token)}) as c:
        r = await c.get(f"/?token={web.token}")
        assert r.status_code == 303 and r.headers["location"] == "/"
        yield c


async def call(c, method, params=None, status=200):
    r = await c.post(f"/api/{method}", json=params or {})
    assert r.status_code == status, r.text
    return r.json()


# ------------------------------------------------------------------ token

async def test_token_login_sets_httponly_strict_cookie(web):
    async with httpx.AsyncClient(base_url=origin(web)) as c:
        r = await c.get("/")
        assert r.status_code == 401 and "labelmesh ui" in r.text
        r = await c.get("/?token=" + "x" * 43)
        assert r.status_code == 401 and "token" in r.text
        assert (await c.post("/api/node_info", json={})).status_code == 401
        r = await c.get(f"/?token={web.token}&tab=1")
        assert r.status_code == 303 and r.headers["location"] == "/?tab=1"  # the token leaves the URL
        cookie = r.headers["set-cookie"]
        assert f"labelmesh_{web.port}={web.token}" in cookie
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        page = await c.get("/")
        assert page.status_code == 200
        assert csrf_value(web.token) in page.text and web.token not in page.text  # scripts never see the token
        for h in ("content-security-policy", "x-content-type-options", "referrer-policy"):
            assert h in page.headers
    async with httpx.AsyncClient(base_url=origin(web), cookies={f"labelmesh_{web.port}": "wrong"}) as c:
        assert (await c.get("/")).status_code == 401
        assert (await c.get("/api/events")).status_code == 401


async def test_each_start_draws_a_new_token(short_dir):
    a, b = WebServer(None, "127.0.0.1:0"), WebServer(None, "127.0.0.1:0")
    assert a.token != b.token and len(a.token) >= 40


# ------------------------------------------------------------------ Host (DNS rebinding)

async def test_host_header_checked(web, client):
    p = web.port
    for host in ("evil.example", f"evil.example:{p}", f"127.0.0.1:{p + 1}", f"localhost.evil.example:{p}", ""):
        r = await client.get("/", headers={"host": host})
        assert r.status_code == 400 and "Host" in r.text, host
    # even with the token: a rebinding page never gets to log in
    r = await client.get(f"/?token={web.token}", headers={"host": f"attacker.example:{p}"})
    assert r.status_code == 400 and "set-cookie" not in r.headers
    for host in (f"127.0.0.1:{p}", f"localhost:{p}", f"LOCALHOST:{p}"):
        assert (await client.get("/", headers={"host": host})).status_code == 200


def test_allowed_hosts_wildcard_takes_ip_literals_only():
    exact, wildcard = allowed_hosts("0.0.0.0", 8080)
    assert wildcard and "localhost:8080" in exact
    from node.web.security import _host_ok
    assert _host_ok("192.0.2.7:8080", exact, wildcard, 8080)
    assert _host_ok("[2001:db8::1]:8080", exact, wildcard, 8080)
    assert not _host_ok("rebind.example:8080", exact, wildcard, 8080)
    assert not _host_ok("192.0.2.7:8081", exact, wildcard, 8080)
    exact, wildcard = allowed_hosts("127.0.0.1", 8080)
    assert not wildcard and not _host_ok("192.0.2.7:8080", exact, wildcard, 8080)


# ------------------------------------------------------------------ CSRF

async def test_writes_need_same_origin_and_csrf_header(web, client):
    good = {"origin": origin(web), "x-labelmesh-csrf": csrf_value(web.token)}
    cases = [({"origin": "http://evil.example"}, "Origin"), ({"origin": "null"}, "Origin"),
             ({"origin": f"http://localhost:{web.port}"}, "Origin"),  # another origin, though the same machine
             ({"x-labelmesh-csrf": "0" * 64}, "x-labelmesh-csrf")]
    for headers, what in cases:
        r = await client.post("/api/node_info", json={}, headers={**good, **headers})
        assert r.status_code == 403 and what in r.json()["error"]["message"], headers
    # no Origin header at all
    async with httpx.AsyncClient(base_url=origin(web), cookies=client.cookies,
                                 headers={"x-labelmesh-csrf": csrf_value(web.token)}) as c:
        r = await c.post("/api/node_info", json={})
        assert r.status_code == 403
        # reads need no CSRF proof (they change nothing), only the cookie
        assert (await c.get("/")).status_code == 200
    r = await client.post("/api/node_info", json={}, headers=good)
    assert r.status_code == 200 and r.json()["result"]["network_name"] == "web"
    assert web.guard.refused["csrf"] >= 5


# ------------------------------------------------------------------ loopback only

async def test_non_loopback_refused_unless_allowed(short_dir, caplog):
    for listen in ("0.0.0.0:8080", "192.0.2.1:8080", "[::]:8080"):
        with pytest.raises(WebError, match="not a loopback address.*--http-allow-remote"):
            WebServer(None, listen)
    w = WebServer(None, "0.0.0.0:8080", allow_remote=True)  # explicit: accepted (warned about at start)
    assert w.allow_remote
    for ok in ("127.0.0.1:8080", "localhost:0", "[::1]:9000", "127.5.6.7:1"):
        WebServer(None, ok)
    for bad in ("8080", "example.com:80", "127.0.0.1:99999", "127.0.0.1:", ":80"):
        with pytest.raises(ConfigError, match="http_listen"):
            parse_http_listen(bad)


async def test_port_in_use_is_a_clear_error(web, short_dir, nursery):
    other = WebServer(web.node, f"127.0.0.1:{web.port}")
    with pytest.raises(WebError, match="cannot serve the web UI"):
        await nursery.start(other.run)


# ------------------------------------------------------------------ routes, bad input

async def test_api_errors_are_clear(web, client):
    assert (await call(client, "no_such_method", status=404))["error"]["code"] == -32601
    for hidden in ("backup_create", "ui_url", "blob_read", "messages_arrival", "stop", "blob_import"):  # not served to browsers
        assert hidden in API_METHODS and hidden not in WEB_METHODS
        r = await call(client, hidden, {"dest": "/tmp/x"}, status=404)
        assert "not served" in r["error"]["message"]
    r = await client.post("/api/task_get", content=b"{not json")
    assert r.status_code == 400 and r.json()["error"]["code"] == -32700
    r = await client.post("/api/task_get", content=b"[1, 2]")
    assert r.status_code == 400 and "object" in r.json()["error"]["message"]
    r = await client.post("/api/task_get", content=b'{"task_id": NaN}')
    assert r.status_code == 400
    assert (await call(client, "task_get", {"task_id": "zz"}, status=400))["error"]["code"] == -32602
    assert (await call(client, "task_get", {}, status=400))["error"]["message"] == "missing param 'task_id'"
    assert (await call(client, "task_get", {"task_id": "00" * 32}, status=404))["error"]["code"] == -32001
    r = await call(client, "task_post", {"account": "alice", "labels": ["a"], "items": [{"file": "/etc/passwd"}]},
                   status=400)
    assert "refused from the web UI" in r["error"]["message"]
    r = await call(client, "annotations_submit", {"account": "nobody", "task_id": "00" * 32, "labels": [[0, 0]]},
                   status=404)
    assert r["error"]["code"] == -32001
    big = b'{"x": "' + b"a" * (16 << 20) + b'"}'
    r = await client.post("/api/node_info", content=big)
    assert r.status_code == 413
    assert (await client.get("/api/node_info")).status_code == 405  # calls are POSTs
    # blobs and exports
    assert (await client.get("/blob/zz/0")).status_code == 400
    assert (await client.get(f"/blob/{'00' * 32}/0")).status_code == 404
    assert (await client.get(f"/blob/{'00' * 32}/x")).status_code in (400, 404)
    assert (await client.get(f"/export/{'00' * 32}")).status_code == 404
    assert (await client.get("/static/../server.py")).status_code == 404
    assert (await client.get("/static/nope.js")).status_code == 404


async def test_upload_blob_task_and_serving(web, client):
    node = web.node
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
    r = await client.post("/upload", content=png, headers={"content-type": "image/png"})
    assert r.status_code == 200, r.text
    blob = r.json()["result"]
    assert blob["size"] == len(png) and blob["media_type"] == "image/png"
    svg = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'
    s = (await client.post("/upload?media_type=image/svg%2Bxml", content=svg)).json()["result"]
    r = await client.post("/upload", content=b"")
    assert r.status_code == 400 and "empty" in r.json()["error"]["message"]
    # a declared size over max_blob_bytes is refused before a byte of the body is read
    s2 = await trio.open_tcp_stream("127.0.0.1", web.port)
    await s2.send_all((f"POST /upload HTTP/1.1\r\nhost: 127.0.0.1:{web.port}\r\norigin: {origin(web)}\r\n"
                       f"x-labelmesh-csrf: {csrf_value(web.token)}\r\ncookie: labelmesh_{web.port}={web.token}\r\n"
                       f"content-length: {node.params.max_blob_bytes + 1}\r\n\r\n").encode())
    with trio.fail_after(10):
        head = await s2.receive_some(4096)
    assert head.startswith(b"HTTP/1.1 413")
    await s2.aclose()
    t = await call(client, "task_post", {"account": "alice", "title": "pics", "labels": ["cat", "dog"],
                                         "items": ["a text item", blob, s, {"hex": "00ff", "media_type": "audio/wav"}],
                                         "duration_s": 60})
    tid = t["result"]["task_id"]
    r = await client.get(f"/blob/{tid}/1")
    assert r.status_code == 200 and r.content == png and r.headers["content-type"] == "image/png"
    assert "sandbox" in r.headers["content-security-policy"]  # never runs as a page of this origin
    r = await client.get(f"/blob/{tid}/2")
    assert r.content == svg and "sandbox" in r.headers["content-security-policy"]
    r = await client.get(f"/blob/{tid}/3")
    assert r.content == b"\x00\xff" and r.headers["content-type"] == "audio/wav"
    r = await client.get(f"/blob/{tid}/0")
    assert r.status_code == 400 and "text" in r.json()["error"]["message"]
    assert (await client.get(f"/blob/{tid}/4")).status_code == 404
    # the same store behind RPC blob_put
    c = await RpcConn.open(node.rpc_socket)
    r = await c.call("blob_put", {"data": png.hex(), "media_type": "image/png"})
    assert r["result"]["sha256"] == blob["sha256"]
    assert (await c.call("blob_put", {"data": "zz"}))["error"]["code"] == -32602


async def test_label_flow_items_worklist_export_events(web, client):
    node = web.node
    t = (await call(client, "task_post", {"account": "alice", "title": "sentiment", "labels": ["pos", "neg"],
                                          "items": [f"item {i}" for i in range(120)], "duration_s": 60,
                                          "bounty": 1000, "redundancy": 2, "domain": "text"}))["result"]
    tid = t["task_id"]
    page = (await call(client, "task_items", {"task_id": tid, "account": "bob", "limit": 50}))["result"]
    assert page["total"] == 120 and len(page["items"]) == 50 and page["next_offset"] == 50
    assert page["items_left"] == 120 and page["items"][0]["data"] == {"kind": "text", "text": "item 0", "truncated": False}
    r = await call(client, "annotations_submit", {"account": "bob", "task_id": tid,
                                                  "labels": [[0, "pos"], [1, "neg"], [2, "pos"]]})
    assert r["result"]["status"] == "accepted"
    other = signed(make_batch(9, bytes.fromhex(tid), [(0, 1), (3, 0)], created_at=T0 + 1), 9, node.network_id)
    await call(client, "annotations_submit", {"raw": other.raw.hex()})
    page = (await call(client, "task_items", {"task_id": tid, "account": "bob", "limit": 5}))["result"]
    assert [it["mine"] for it in page["items"]] == ["pos", "neg", "pos", None, None]
    assert [it["annotators"] for it in page["items"]] == [2, 1, 1, 1, 0]
    assert page["items_left"] == 117 and page["batches_used"] == 1
    todo = (await call(client, "task_items", {"task_id": tid, "account": "bob", "todo": True, "limit": 2}))["result"]
    assert [it["item"] for it in todo["items"]] == [3, 4] and todo["next_offset"] == 5
    last = (await call(client, "task_items", {"task_id": tid, "offset": 119}))["result"]
    assert len(last["items"]) == 1 and last["next_offset"] is None
    for bad in ({"task_id": tid, "limit": 0}, {"task_id": tid, "limit": 501}, {"task_id": tid, "offset": -1},
                {"task_id": tid, "todo": True}, {"task_id": tid, "todo": "yes", "account": "bob"}):
        assert (await call(client, "task_items", bad, status=400))["error"]["code"] == -32602
    assert (await call(client, "task_items", {"task_id": tid, "account": "carol"}, status=404))["error"]["code"] == -32001
    wl = (await call(client, "worklist", {"account": "bob"}))["result"]
    assert wl["total"] == 1 and wl["tasks"][0]["items_left"] == 117 and wl["tasks"][0]["bounty"] == 1000
    assert (await call(client, "worklist", {}, status=400))["error"]["code"] == -32602
    assert (await call(client, "worklist", {"account": "bob", "limit": 1000}, status=400))
    # the numbers a page shows come from the same functions as the RPC's
    cons = (await call(client, "consensus_get", {"task_id": tid, "limit": 4}))["result"]
    c = await RpcConn.open(node.rpc_socket)
    assert cons == (await c.call("consensus_get", {"task_id": tid, "limit": 4}))["result"]
    r = await client.get(f"/export/{tid}?format=csv")
    assert r.status_code == 200 and r.text.startswith("item,text,label") and "attachment" in r.headers["content-disposition"]
    assert (await client.get(f"/export/{tid}?format=xml")).status_code == 400
    # live updates: the first tick carries the counters and the task's message count
    async with client.stream("GET", "/api/events") as s:
        assert s.headers["content-type"].startswith("text/event-stream")
        lines = s.aiter_lines()
        with trio.fail_after(10):
            async for line in lines:
                if line.startswith("data:"):
                    tick = json.loads(line[5:])
                    break
    assert tick["tasks"][tid] == 3 and tick["stored"] == node.store.count()


async def test_event_streams_are_bounded(web, client, monkeypatch):
    from node.web import server
    monkeypatch.setattr(server, "MAX_EVENT_CLIENTS", 0)
    r = await client.get("/api/events")
    assert r.status_code == 503


async def test_ui_url_over_rpc(web):
    c = await RpcConn.open(web.node.rpc_socket)
    r = (await c.call("ui_url"))["result"]
    assert r["login_url"] == f"http://127.0.0.1:{web.port}/?token={web.token}"
    web.node.web = None
    r = await c.call("ui_url")
    assert r["error"]["code"] == -32004 and "--http" in r["error"]["message"]


async def test_websockets_refused(web):
    # a websocket handshake is closed before it is accepted (no websocket endpoint)
    async with httpx.AsyncClient(base_url=origin(web)) as c:
        r = await c.get("/", headers={"connection": "upgrade", "upgrade": "websocket", "sec-websocket-version": "13",
                                      "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ=="})
        assert r.status_code in (400, 403)


def test_config_http_listen(short_dir, monkeypatch):
    from node.config import NodeConfig, resolve_config

    (short_dir / "config.toml").write_text(NodeConfig(http_listen="127.0.0.1:8080").to_toml())
    cfg, src = resolve_config(short_dir, {"http_listen": None}, env={})
    assert cfg.http_listen == "127.0.0.1:8080" and src["http_listen"] == "file"
    cfg, src = resolve_config(short_dir, {"http_listen": "127.0.0.1:9000"}, env={})
    assert cfg.http_listen == "127.0.0.1:9000" and src["http_listen"] == "flag --http"
    with pytest.raises(ConfigError, match="http_listen"):
        resolve_config(short_dir, {"http_listen": "example.com:80"}, env={})


# ------------------------------------------------------------------ the assets

def test_assets_are_local_and_shipped():
    """Every asset is in the package (pyproject's package-data), every reference points
    at one, and nothing is fetched from elsewhere (works offline, no CDN)."""
    import fnmatch
    import re
    import tomllib
    from pathlib import Path

    from node.web.server import STATIC

    root = Path(__file__).resolve().parents[1]
    project = tomllib.loads((root / "pyproject.toml").read_text())
    assert "node.*" in project["tool"]["setuptools"]["packages"]["find"]["include"]
    patterns = project["tool"]["setuptools"]["package-data"]["node.web"]
    files = sorted(p for p in STATIC.rglob("*") if p.is_file())
    assert {p.name for p in files} >= {"index.html", "app.js", "lib.js", "label.js", "requester.js", "dashboard.js",
                                       "charts.js", "style.css"}
    for p in files:
        rel = str(p.relative_to(STATIC.parent))
        assert any(fnmatch.fnmatch(rel, pat) for pat in patterns), f"{rel} is not in the wheel's package-data"
        text = p.read_text()
        for url in re.findall(r"https?://[^\s'\"`)]+", text):
            assert url.startswith("http://www.w3.org/2000/svg"), f"{p.name} refers to {url}: assets must be local"
        for ref in re.findall(r"""(?:from |import\(|href=|src=)['"](?:/static/|\./)([\w.-]+)['"]""", text):
            assert (STATIC / ref).is_file(), f"{p.name} refers to a missing asset {ref}"


def test_refused_address_opens_nothing(short_dir):
    """A non-loopback --http is refused before the node opens its store."""
    g = make_genesis("web", T0, [(pk(1000), 1)], [], [(pk(1), 10**9)])
    with pytest.raises(WebError, match="--http-allow-remote"):
        Node(short_dir, g, p2p_factory=None, http_listen="192.0.2.1:8080")
    assert not (short_dir / "store").exists()
