"""Screenshots of each page of the web UI for the docs (``scripts/ui-screenshots``).

Starts a throw-away 3-node devnet, runs the demo (a certified task of simulated
annotators) and posts an open task, labels a few of its items in the browser, and writes
PNGs of every page, on a desktop and on a phone, into ``docs/ui/`` (or ``--out``).
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

DESKTOP = {"width": 1280, "height": 860}
PHONE = {"width": 390, "height": 844}


def take(out: Path) -> list[Path]:
    from devtools import devnet
    from devtools.bench.browser import launch

    out.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="lmshot", dir="/tmp"))
    shots: list[Path] = []
    try:
        devnet.up(root, 3, web=True)
        summary = devnet.demo(root, 200, 12.0, 7)
        demo_task = summary["task_id"]
        label_url = devnet.invite(root)
        ui = devnet.rpc(root, 0, "ui_url")
        open_task = next(t["task_id"] for t in devnet.rpc(root, 0, "tasks_list")["tasks"] if t["status"] == "open")
        with launch() as browser:
            def page_for(viewport, **kw):
                ctx = browser.new_context(viewport=viewport, device_scale_factor=1, **kw)
                p = ctx.new_page()
                p.set_default_timeout(60_000)
                p.goto(label_url)  # logs in (the token becomes a cookie)
                p.wait_for_selector(".task-card")
                return p

            def shot(p, name, full=True):
                p.wait_for_timeout(400)  # let the last frame settle (pictures only; no test waits like this)
                path = out / f"{name}.png"
                p.screenshot(path=str(path), full_page=full)
                shots.append(path)
                print(f"wrote {path}")

            p = page_for(DESKTOP)
            p.select_option("#account", "annotator")
            p.wait_for_selector(f'[data-task="{open_task}"]')
            shot(p, "label-tasks")
            p.click(f'[data-task="{open_task}"]')
            p.wait_for_selector('#item[data-item="0"]')
            for key in "1213":
                p.keyboard.press(key)
            p.keyboard.press("Enter")
            p.wait_for_selector(".batch.ok")
            for key in "12":
                p.keyboard.press(key)
            shot(p, "label-item", full=False)
            p.goto(f"{ui['url']}#/requester")
            p.wait_for_selector("#my-tasks table")
            p.fill("[name=title]", "Is this review positive?")
            p.fill("[name=labels]", "positive, negative, mixed")
            p.fill("[name=domain]", "reviews")
            shot(p, "requester-post")
            p.goto(f"{ui['url']}#/task/{demo_task}")
            p.wait_for_selector('#annotator-table')
            p.wait_for_selector('.kpis[data-status="certified"]')
            shot(p, "requester-task")
            p.goto(f"{ui['url']}#/")
            p.wait_for_selector("#peer-table")
            p.wait_for_selector("#reward-board")
            p.wait_for_function("() => document.querySelectorAll('#rate-chart polyline').length > 0")
            shot(p, "dashboard")
            phone = page_for(PHONE, is_mobile=True, has_touch=True)
            phone.select_option("#account", "annotator")
            phone.click(f'[data-task="{open_task}"]')
            phone.wait_for_selector('#item[data-item]')
            shot(phone, "phone-label", full=False)
            phone.goto(f"{ui['url']}#/")
            phone.wait_for_selector("#peer-table")
            shot(phone, "phone-dashboard", full=False)
    finally:
        devnet.down(root)
        shutil.rmtree(root, ignore_errors=True)
    return shots


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="scripts/ui-screenshots", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="docs/ui", help="directory for the PNGs (default docs/ui)")
    args = p.parse_args(argv)
    t0 = time.monotonic()
    shots = take(Path(args.out))
    print(f"{len(shots)} screenshots in {time.monotonic() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
