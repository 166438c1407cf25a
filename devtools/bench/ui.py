"""The web UI in a real headless Chromium against a 3-node devnet (node/web/).

* ``ui_first_paint_ms``: a warm node (devnet up, the page's assets served once before),
  a fresh navigation to the labeling page of a 10,000-item task; from the navigation's
  start to the first item drawn and ready for a key (the page's performance mark
  ``labelmesh:first-item``). ``ui_fcp_ms`` is Chromium's first contentful paint of the
  same loads. Median of the repeats.
* ``ui_items_fetched``: how many items the page asked the node for before that first
  paint (the sum of its ``task_items`` limits: a page of 50 and the first item still to
  label); never the 10,000.
* ``ui_next_item_ms``: a number key to the next item drawn (a MutationObserver on the
  item card, then one animation frame), over the first 200 items of the 10,000-item task,
  which crosses 4 page fetches; median and p95.
* ``ui_label_to_stored_ms``: a key press (the keydown event's time) to the batch holding
  that label stored on every node of the devnet (``messages_arrival`` on each node;
  one machine, one clock), with the page's own batching: a label waits up to 4 s in the
  page, where it can still be changed, before the batch is signed. ``ui_submit_to_stored_ms``:
  the same with Enter ("submit now") right after the key: the node's part alone.
"""
from __future__ import annotations

import statistics
import time

from .common import Devnet, figure, log, percentile

ITEMS = 10_000


def run(quick: bool) -> list[dict]:
    from devtools.bench.browser import launch

    reps = 3 if quick else 9
    rounds = 3 if quick else 8
    dn = Devnet(3, prefix="lmbui", web=True)
    try:
        ui = dn.rpc(0, "ui_url")
        task = dn.rpc(0, "task_post", {
            "account": "requester", "title": "bench: 10,000 items", "labels": ["pos", "neg", "neutral"],
            "items": [f"item {k}: a sentence of about the length of a short review, number {k}" for k in range(ITEMS)],
            "duration_s": 3600, "redundancy": 3, "domain": "bench"}, timeout=120)
        tid = task["task_id"]
        page_url = f"{ui['url']}#/label/{tid}"
        with launch() as browser:
            ctx = browser.new_context(viewport={"width": 1200, "height": 900})
            page = ctx.new_page()
            page.set_default_timeout(60_000)
            page.goto(ui["login_url"] + "#/label")  # log in (cookie), choose the account
            page.select_option("#account", "annotator")
            page.wait_for_selector(f'[data-task="{tid}"]')
            fetched: list[int] = []  # the 'limit' of every task_items call: items asked for at most
            page.on("request", lambda r: fetched.append((r.post_data_json or {}).get("limit", 50))
                    if "/api/task_items" in r.url else None)
            paints, fcps, items_fetched = [], [], []
            for k in range(reps + 1):  # the first load warms the assets up
                fetched.clear()
                page.goto("about:blank")
                page.goto(page_url)
                page.wait_for_selector('#item[data-item]')
                t = page.evaluate("""() => {
                    const m = performance.getEntriesByName('labelmesh:first-item')[0];
                    const f = performance.getEntriesByName('first-contentful-paint')[0];
                    return [m ? m.startTime : null, f ? f.startTime : null];
                }""")
                n_items = page.evaluate("() => document.querySelectorAll('#item').length")
                if k:
                    paints.append(t[0])
                    fcps.append(t[1])
                    items_fetched.append(sum(fetched))
                assert n_items == 1
            log(f"ui: first item drawn in {statistics.median(paints):.0f} ms (median of {reps}), "
                f"{max(items_fetched)} items fetched")
            nexts = next_item_times(page, page_url, 200)
            log(f"ui: next item after a key: median {statistics.median(nexts):.1f} ms, p95 {percentile(nexts, 95):.1f} ms")
            batched = [label_to_stored(dn, page, submit_now=False) for _ in range(rounds)]
            now = [label_to_stored(dn, page, submit_now=True) for _ in range(rounds)]
            log(f"ui: key to stored on 3 nodes: {statistics.median(batched):.0f} ms with the page's batching, "
                f"{statistics.median(now):.0f} ms with submit-now")
    finally:
        dn.close()
    return [
        figure("ui_first_paint_ms", statistics.median(paints), "ms", higher_is_better=False,
               note=f"labeling page of a {ITEMS:,}-item task, warm node, navigation to first item drawn; median of {reps}"),
        figure("ui_fcp_ms", statistics.median(fcps), "ms", higher_is_better=False,
               note="Chromium's first contentful paint of the same loads"),
        figure("ui_items_fetched", max(items_fetched), "items", higher_is_better=False,
               note=f"items the page fetched for its first paint, of {ITEMS:,}"),
        figure("ui_next_item_ms", statistics.median(nexts), "ms", higher_is_better=False,
               note=f"key to next item drawn, 200 items (4 page fetches); p95 {percentile(nexts, 95):.1f} ms"),
        figure("ui_label_to_stored_ms", statistics.median(batched), "ms", higher_is_better=False,
               note=f"key press to its batch stored on all 3 nodes, page batching (<= 4 s wait); median of {rounds}, "
                    f"max {max(batched):.0f}"),
        figure("ui_submit_to_stored_ms", statistics.median(now), "ms", higher_is_better=False,
               note=f"the same with Enter (submit now) after the key; median of {rounds}, max {max(now):.0f}"),
    ]


def next_item_times(page, url: str, n: int) -> list[float]:
    page.goto("about:blank")
    page.goto(url)
    page.wait_for_selector('#item[data-item]')
    out = []
    for _ in range(n):
        out.append(page.evaluate("""() => new Promise((resolve) => {
            const card = document.getElementById('item');
            const before = card.dataset.item;
            const t0 = performance.now();
            const mo = new MutationObserver(() => {
                if (card.dataset.item !== before) {
                    mo.disconnect();
                    requestAnimationFrame(() => resolve(performance.now() - t0));
                }
            });
            mo.observe(card, {attributes: true});
            document.dispatchEvent(new KeyboardEvent('keydown', {key: '1', bubbles: true}));
        })"""))
    page.keyboard.press("Enter")  # send what is pending
    return out


def label_to_stored(dn: Devnet, page, *, submit_now: bool) -> float:
    """One label by key press; ms from the keydown to its batch stored on every node."""
    page.evaluate("""() => { window.__lmNext = new Promise((resolve) =>
        window.addEventListener('labelmesh:batch', (e) => resolve(e.detail), {once: true})); }""")
    page.keyboard.press("2")
    if submit_now:
        page.keyboard.press("Enter")
    key_at = page.evaluate("() => window.__lmKeyAt")
    detail = page.evaluate("() => window.__lmNext")  # resolves when the page's batch is answered
    if detail["kind"] != "ok":
        raise RuntimeError(f"batch refused: {detail['text']}")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        arrived = [dn.rpc(i, "messages_arrival", {"ids": [detail["batch"]]})["arrival_ms"][0] for i in range(dn.n)]
        if all(a is not None for a in arrived):
            return max(arrived) - key_at
        time.sleep(0.005)
    raise RuntimeError(f"batch {detail['batch']} did not reach every node within 60 s")
