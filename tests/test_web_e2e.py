"""The web UI in a real headless Chromium against a real 3-node devnet (node/web/).

A requester posts a task from a JSONL upload on node 0's UI; two annotators label it with the
keyboard at the same time, one on node 1's UI and one on node 2's; node 0's page shows the
votes arrive live and then the certified result, and every number on it equals node 0's
`consensus_get`; the annotators then see their accuracy and reward. Then the token, Host
(DNS rebinding through Chromium's resolver) and CSRF checks refuse what they must.

Needs Debian's `chromium` and Playwright for Python (the test extra); fails, never skips,
without them. Waits are on conditions with bounds; nothing is timed.
"""
from __future__ import annotations

import http.server
import json
import shutil
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest
from playwright.sync_api import expect

from devtools.bench.browser import BrowserMissing, chromium_path, launch
from node.rpc import RpcClient

from .helpers import cli, poll

pytestmark = pytest.mark.devnet

ITEMS = 12
DEADLINE_S = 60
WAIT_MS = 60_000


@pytest.fixture
def devnet():
    d = Path(tempfile.mkdtemp(prefix="lmui", dir="/tmp"))
    cli("devnet", "up", "-n", "3", "--root", str(d))
    yield d
    cli("devnet", "down", "--root", str(d), check=False, timeout=60)
    shutil.rmtree(d, ignore_errors=True)


def rpc(d: Path, i: int, method: str, params=None):
    with RpcClient(d / f"node-{i}" / "node.sock") as c:
        return c.call(method, params or {})


@contextmanager
def attacker_site():
    """Another web site on this machine (an origin other than the UI's): its URL."""
    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = b"<html><body>another site</body></html>"
            self.send_response(200)
            self.send_header("content-type", "text/html")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}/"
    finally:
        srv.shutdown()
        srv.server_close()


def test_browser_is_installed():
    """The browser tests need a real Chromium: say so plainly rather than skip."""
    try:
        chromium_path()
    except BrowserMissing as e:
        pytest.fail(str(e))


def test_label_on_two_nodes_requester_sees_certified_result(devnet, tmp_path):
    d = devnet
    urls = [json.loads(cli("ui", "--json", "--data-dir", str(d / f"node-{i}")).stdout) for i in range(3)]
    items = tmp_path / "tweets.jsonl"
    items.write_text("".join(json.dumps({"text": f"tweet {k}: {'great' if k % 3 else 'awful'} service"}) + "\n"
                             for k in range(ITEMS)))
    with launch(extra_args=["--host-resolver-rules=MAP rebind.test 127.0.0.1"]) as browser:
        req = browser.new_context(viewport={"width": 1200, "height": 900})
        errors = []
        r = req.new_page()
        r.on("pageerror", lambda e: errors.append(str(e)))
        r.set_default_timeout(WAIT_MS)
        # ---- the requester posts a task from a JSONL upload on node 0
        r.goto(urls[0]["login_url"] + "#/requester")
        assert "token" not in r.url  # the token left the address bar for a cookie
        r.fill("[name=title]", "tweet sentiment")
        r.fill("[name=labels]", "pos, neg")
        r.fill("[name=domain]", "sentiment")
        r.fill("[name=redundancy]", "2")
        r.fill("[name=bounty]", "1000")
        r.fill("[name=minutes]", str(DEADLINE_S / 60))
        r.set_input_files("[name=items]", str(items))
        r.select_option("#account", "requester")
        r.click("#post")
        link = r.wait_for_selector("#posted-link")
        task_id = link.get_attribute("href").rsplit("/", 1)[1]
        link.click()
        r.wait_for_selector("#k-labels")
        assert r.inner_text("#k-labels") == "0"

        # ---- two annotators, on node 1 and node 2, label with the keyboard at the same time
        pages = []
        for i in (1, 2):
            ctx = browser.new_context(viewport={"width": 420, "height": 860}, is_mobile=True)  # a phone
            p = ctx.new_page()
            p.on("pageerror", lambda e: errors.append(str(e)))
            p.set_default_timeout(WAIT_MS)
            p.goto(urls[i]["login_url"] + "#/label")
            p.select_option("#account", "annotator")
            p.wait_for_selector(f'[data-task="{task_id}"]')  # the task reached this node
            p.click(f'[data-task="{task_id}"]')
            p.wait_for_selector('#item[data-item="0"]')
            pages.append(p)
        answers = {1: ["1" if k % 3 else "2" for k in range(ITEMS)],   # node 1's annotator: the obvious labels
                   2: ["1" if k % 4 else "2" for k in range(ITEMS)]}   # node 2's: disagrees on some
        for k in range(ITEMS):
            for i, p in zip((1, 2), pages):
                p.wait_for_selector(f'#item[data-item="{k}"]')
                if k == 3:  # change one's mind: label, go back, label again (still pending), undo, redo
                    p.keyboard.press("2" if answers[i][k] == "1" else "1")
                    p.wait_for_selector(f'#item[data-item="{k + 1}"]')
                    p.keyboard.press("ArrowLeft")
                    p.wait_for_selector(f'#item[data-item="{k}"]')
                p.keyboard.press(answers[i][k])
                if k == 3:  # undo brings back the earlier (pending) label; label again
                    p.wait_for_selector(f'#item[data-item="{k + 1}"]')
                    p.keyboard.press("u")
                    p.wait_for_selector(f'#item[data-item="{k}"]')
                    p.keyboard.press(answers[i][k])
        for p in pages:
            p.wait_for_selector(".done")
            p.keyboard.press("Enter")
            p.wait_for_selector(f'#progress-text[data-done="{ITEMS}"][data-pending="0"]')
            assert p.locator(".batch.err").count() == 0, p.inner_text("#batch-status")
            assert p.locator(".batch.ok").count() >= 1

        # ---- the requester's page (never reloaded) sees the votes arrive, then the certificate
        expect(r.locator("#k-labels")).to_have_text(str(2 * ITEMS), timeout=WAIT_MS)
        expect(r.locator("#k-status")).to_have_text("certified", timeout=(DEADLINE_S + 90) * 1000)
        r.wait_for_selector("#annotator-table")
        c = rpc(d, 0, "consensus_get", {"task_id": task_id})
        assert c["status"] == "certified"
        assert r.inner_text("#k-batches") == str(c["batches"])
        assert r.inner_text("#k-labels") == str(c["labels"]) == str(2 * ITEMS)
        assert r.inner_text("#k-alpha") == f"{c['alpha_f']:.3f}"
        assert r.inner_text("#k-set-root") == c["set_root"] and r.inner_text("#k-result-root") == c["result_root"]
        cert = c["certificate"]
        assert r.inner_text("#k-cert") == f"round {cert['round']}, {len(cert['signers'])} validators ({cert['weight']}/{cert['total_weight']})"
        shown = {row.get_attribute("data-account"): (row.locator(".n-labels").inner_text(), row.locator(".n-accuracy").inner_text(),
                                                    row.locator(".n-reward").inner_text().replace(",", ""))
                 for row in r.locator("#annotator-table tbody tr").all()}
        assert shown == {a["account"]: (str(a["labels"]), f"{a['accuracy_f']:.3f}", str(a["reward"])) for a in c["annotators"]}
        keys = {i: next(a["public_key"] for a in rpc(d, i, "account_list")["accounts"] if a["name"] == "annotator")
                for i in (1, 2)}
        assert set(shown) == set(keys.values())
        rows = r.locator("#item-table tbody tr").all()
        assert len(rows) == ITEMS
        for row, it in zip(rows, c["items"]):
            assert row.get_attribute("data-item") == str(it["item"])
            assert row.locator(".label").inner_text() == it["label"]
            assert row.locator(".votes").inner_text().strip() == f"{it['votes']}/2"
            assert row.locator(".conf").inner_text() == f"{it['confidence_f']:.2f}"
        # every node agrees with what the page shows
        for i in (1, 2):
            assert poll(lambda: rpc(d, i, "consensus_get", {"task_id": task_id, "items": False})["result_root"] == c["result_root"],
                        60, f"node {i} to hold the certified result")
        # ---- each annotator sees its own accuracy and reward next to the consensus
        for n, (i, p) in enumerate(zip((1, 2), pages)):
            if n:  # the page turned into the results by itself; after a reload it opens on them
                p.reload()
            p.wait_for_selector('#my-summary[data-status="certified"]')
            mine = next(a for a in c["annotators"] if a["account"] == keys[i])
            assert p.inner_text("#my-reward") == f"{mine['reward']:,} cr"
            assert p.inner_text("#my-accuracy") == f"{100 * mine['accuracy_f']:.1f}%"
            assert p.locator("#compare tbody tr").count() == ITEMS
        # ---- export from the requester's page: the certified dataset as CSV
        with r.expect_download() as dl:
            r.click("#export-csv")
        body = Path(dl.value.path()).read_text()
        assert body == rpc(d, 0, "task_export", {"task_id": task_id, "format": "csv"})["content"]

        # ---- what must be refused
        tasks_before = rpc(d, 0, "tasks_list")["total"]
        anon = browser.new_context().new_page()
        resp = anon.goto(urls[0]["url"])  # no token
        assert resp.status == 401 and "labelmesh ui" in anon.inner_text("body")
        resp = anon.goto(urls[0]["url"] + "?token=not-the-token")
        assert resp.status == 401
        # DNS rebinding: a name that resolves to 127.0.0.1 still does not reach the UI, token or not
        port0 = urls[0]["url"].rsplit(":", 1)[1].strip("/")
        resp = anon.goto(f"http://rebind.test:{port0}/?token=" + urls[0]["login_url"].split("token=")[1])
        assert resp.status == 400 and "Host header not allowed" in anon.inner_text("body")
        # CSRF: a page of another origin on the same host (so the browser sends the cookie:
        # same site) posts to node 0 from the logged-in browser
        refused = rpc(d, 0, "ui_url")["refused"]
        with attacker_site() as site:
            other = req.new_page()
            other.goto(site)
            status = other.evaluate("""async (target) => {
                const r1 = await fetch(target + 'api/task_post', {method: 'POST', mode: 'no-cors', credentials: 'include',
                    headers: {'content-type': 'text/plain'}, body: JSON.stringify({account: 'requester', title: 'forged',
                    labels: ['a', 'b'], items: ['x']})});
                let r2 = 'blocked';
                try { r2 = (await fetch(target + 'api/node_info', {method: 'POST', credentials: 'include',
                    headers: {'content-type': 'application/json', 'x-labelmesh-csrf': 'guess'}, body: '{}'})).status; }
                catch (e) { r2 = 'blocked'; }
                return [r1.type, r2];
            }""", urls[0]["url"])
        assert status == ["opaque", "blocked"]  # sent blind and refused by the node; the other not even sent (CORS)
        after = rpc(d, 0, "ui_url")["refused"]
        assert after["csrf"] == refused["csrf"] + 1  # refused by the Origin check, cookie or not
        assert rpc(d, 0, "tasks_list")["total"] == tasks_before  # nothing was posted
        # the same-origin page with its CSRF header still works
        assert r.evaluate("fetch('/api/node_info', {method: 'POST', headers: {'x-labelmesh-csrf': "
                          "document.querySelector('meta[name=csrf]').content}, body: '{}'}).then(x => x.status)") == 200
        assert r.evaluate("fetch('/api/node_info', {method: 'POST', body: '{}'}).then(x => x.status)") == 403
        assert not errors, errors
