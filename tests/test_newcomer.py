"""Issue #18, "a newcomer's first hour": daemon conventions (--version, stop, a closed pipe,
whole RPC descriptions, completion of flag values and RPC methods in bash and zsh)."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import trio

from node import __version__, cli
from node.app import Node
from node.keystore import Keystore
from node.rpc.methods import METHODS, describe
from protocol.genesis import make_genesis

from .helpers import T0, FakeClock, advance, key, pk, poll, wait_for

ROOT = Path(__file__).resolve().parent.parent


def run(*args, **kw):
    return subprocess.run([sys.executable, "-m", "node.cli", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, **kw)


async def run_cli(capsys, *argv) -> tuple[int, str, str]:
    """`labelmesh ARGV` in a worker thread (it blocks on the node's socket); (code, out, err)."""
    capsys.readouterr()
    code = await trio.to_thread.run_sync(partial(cli.main, [str(a) for a in argv]))
    out, err = capsys.readouterr()
    return code, out, err


def test_version_flag():
    r = run("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"labelmesh {__version__}"


def test_a_closed_pipe_is_not_a_traceback():
    """`labelmesh ... | head`: the reader is gone before labelmesh writes."""
    rd, wr = os.pipe()
    os.close(rd)
    try:
        p = subprocess.run([sys.executable, "-m", "node.cli", "completion", "bash"], cwd=ROOT, stdout=wr,
                           stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(wr)
    assert p.returncode == 141 and p.stderr == "", p.stderr


def test_rpc_method_descriptions_are_whole_sentences():
    for name, fn in METHODS.items():
        d = describe(fn)
        para = " ".join((fn.__doc__ or "").strip().split("\n\n")[0].split())
        assert d and d == para, name
        assert d.endswith((".", ".)")), f"{name}: {d!r} is cut"


COMPLETE = 't() { COMP_WORDS=("$@"); COMP_CWORD=$((${#COMP_WORDS[@]}-1)); _labelmesh; echo "${COMPREPLY[*]}"; }\n'
CASES = [  # words typed (the last one is being completed), words that must be offered, words that must not
    (["labelmesh", "rp"], {"rpc"}, {"run"}),
    (["labelmesh", "rpc", "cons"], {"consensus_get"}, set()),
    (["labelmesh", "rpc", "--data-dir", "/tmp", "st"], {"stop"}, set()),
    (["labelmesh", "export", "x", "--format", ""], {"jsonl", "csv", "labelstudio"}, {"--out"}),
    (["labelmesh", "task", ""], {"post", "list", "show", "items"}, set()),
    (["labelmesh", "task", "post", "f", "--acc"], {"--account"}, set()),
    (["labelmesh", "completion", ""], {"bash", "zsh"}, set()),
    (["labelmesh", "label", "--data-dir", "DD", "abcd", "0", "cat", "--account", ""], {"alice", "bob"}, {"cat"}),
]


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_completion_of_verbs_flag_values_and_rpc_methods(shell, tmp_path):
    exe = shutil.which(shell)
    assert exe, f"{shell} is needed for this test (.ci/run installs zsh)"
    script = run("completion", shell)
    assert script.returncode == 0, script.stderr
    f = tmp_path / "c"
    if shell == "zsh":  # bashcompinit calls a bash function under zsh's sh emulation
        body = ("autoload -U compinit && compinit -u\nsource " + str(f) + "\n" +
                COMPLETE.replace("t() {", "t() { emulate -L sh; setopt kshglob noshglob braceexpand;"))
    else:
        body = "source " + str(f) + "\n" + COMPLETE
    f.write_text(script.stdout)
    for name in ("alice", "bob"):  # a data dir with two accounts, for --account
        (tmp_path / "dd" / "accounts").mkdir(parents=True, exist_ok=True)
        (tmp_path / "dd" / "accounts" / f"{name}.json").write_text("{}")
    body += "".join("t " + " ".join(f"'{tmp_path / 'dd' if w == 'DD' else w}'" for w in words) + "\n"
                    for words, _, _ in CASES)
    r = subprocess.run([exe, "-c", body], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == len(CASES), r.stdout + r.stderr
    for (words, want, not_want), line in zip(CASES, lines):
        got = set(line.split())
        if shell == "zsh":  # zsh filters by the typed prefix itself
            got = {g for g in got if g.startswith(words[-1])}
        assert want <= got and not (not_want & got), (words, line)


# ------------------------------------------------------------------ stop


async def test_stop_rpc_and_verb_in_process(short_dir, capsys, nursery):
    ks = Keystore(short_dir)
    ks.create("alice", seed=bytes(key(1)))
    g = make_genesis("stop", T0, [(pk(1000), 1)], [], [])
    node = Node(short_dir, g, p2p_factory=None, keystore=ks, clock=FakeClock(), rpc_socket=short_dir / "node.sock")
    await nursery.start(node.run)
    code, out, err = await run_cli(capsys, "rpc", "stop", '{"now": true}', "--data-dir", short_dir)
    assert code == 2 and "stop takes no params" in err and not node.stopped.is_set()
    code, out, err = await run_cli(capsys, "stop", "--data-dir", short_dir, "--timeout", "0")
    assert code == 2 and "--timeout" in err
    code, out, err = await run_cli(capsys, "stop", "--data-dir", short_dir, "--json")
    assert code == 0, err
    assert json.loads(out) == {"stopped": True, "pid": os.getpid()}
    with trio.fail_after(30):
        await node.stopped.wait()
    assert not (short_dir / "node.sock").exists()
    code, out, err = await run_cli(capsys, "stop", "--data-dir", short_dir)
    assert code == 3 and "no node is running" in err


def test_stop_a_running_daemon(short_dir):
    dd = short_dir / "n"
    assert run("init", "--data-dir", dd).returncode == 0
    log = open(short_dir / "out", "w+")
    p = subprocess.Popen([sys.executable, "-m", "node.cli", "run", "--data-dir", str(dd)], cwd=ROOT, stdout=log,
                         stderr=subprocess.STDOUT, start_new_session=True)
    try:
        poll(lambda: '"event": "ready"' in (short_dir / "out").read_text(), 60, "the node to start")
        r = run("stop", "--data-dir", dd)
        assert r.returncode == 0 and f"node stopped (pid {p.pid})" in r.stdout, r.stderr
        assert p.wait(30) == 0
        assert "stop requested over RPC" in (short_dir / "out").read_text()
    finally:
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            p.wait(10)
        log.close()


# ------------------------------------------------------------------ packaging


def test_license_matches_pyproject_and_dockerfile_runs_a_real_verb():
    import re
    import tomllib

    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert meta["license"]["text"] == "MIT"
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    docker = (ROOT / "Dockerfile").read_text()
    for src in re.findall(r"^COPY (.+) \S+$", docker, re.M):
        for name in src.split():
            assert (ROOT / name).exists(), f"Dockerfile copies {name}, which is not in the tree"
    entry = json.loads(re.search(r"^ENTRYPOINT (.+)$", docker, re.M).group(1))
    cmd = json.loads(re.search(r"^CMD (.+)$", docker, re.M).group(1))
    assert entry == ["labelmesh"]
    args = cli.build_parser().parse_args(cmd)  # the container's command is a verb this CLI has
    assert args.fn.__name__ == "cmd_run" and args.data_dir == "/data"


# ------------------------------------------------------------------ a node to browse


@pytest.fixture
async def one_node(short_dir, nursery):
    """A node without network, with a requester 'req', annotators 'default', 'ann2', 'ann3'."""
    dd = short_dir / "dd"
    dd.mkdir(mode=0o700)
    ks = Keystore(dd)
    for name, n in {"req": 1, "default": 51, "ann2": 52, "ann3": 53}.items():
        ks.create(name, seed=bytes(key(n)))
    g = make_genesis("nc", T0, [(pk(1000), 1)], [], [(pk(1), 10**9)],
                     {"grace_period_ms": 1000, "round_timeout_ms": 2000})
    clock = FakeClock(T0)
    node = Node(dd, g, p2p_factory=None, keystore=ks, clock=clock, rpc_socket=dd / "node.sock",
                validator_key=key(1000), finality_tick_s=0.02)
    await nursery.start(node.run)
    node.test_clock = clock
    node.dd = dd
    return node


async def post(capsys, node, lines: list, *extra, name="items.jsonl") -> tuple[int, str, str]:
    f = node.dd.parent / name
    f.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return await run_cli(capsys, "task", "post", f, "--labels", "cat,dog", "--duration", "5", "--account", "req",
                         "--data-dir", node.dd, *extra)


async def test_prefix_ids_everywhere_and_ambiguous_prefixes(one_node, capsys):
    from protocol.messages import sign_message

    from .helpers import make_task

    node, dd = one_node, one_node.dd
    code, out, err = await post(capsys, node, ["a", "b", "c"], "--json")
    assert code == 0, err
    tid = json.loads(out)["task_id"]
    # two more tasks whose ids share their first 4 hex digits (found by trying nonces offline)
    seen = {}
    for nonce in range(100_000):
        m = sign_message(make_task(requester=1, nonce=nonce, bounty=0), key(1), node.network_id)
        p = m.compute_id(node.network_id).hex()[:4]
        if p in seen and p != tid[:4]:
            pair = [seen[p], m]
            break
        seen[p] = m
    for m in pair:
        assert (await METHODS["task_post"](node, {"raw": m.raw.hex()}))["status"] == "accepted"
    twin = pair[0].compute_id(node.network_id).hex()

    # every verb that takes a task takes a unique prefix
    for verb in (["consensus", tid[:6]], ["certificate", tid[:4]], ["export", tid[:8]], ["task", "show", tid[:5]],
                 ["task", "items", tid[:7]], ["rewards", "--task", tid[:6]]):
        code, out, err = await run_cli(capsys, *verb, "--data-dir", dd)
        assert code == 0, (verb, err)
    code, out, err = await run_cli(capsys, "label", tid[:6], "0", "cat", "--account", "ann2", "--data-dir", dd)
    assert code == 0 and "accepted" in out, err
    # ambiguous: one line naming each match; too short, not hex, unknown: one line each
    code, out, err = await run_cli(capsys, "consensus", twin[:4], "--data-dir", dd)
    assert code == 2 and err.count("\n") == 1 and "ambiguous, 2 tasks match" in err
    assert all(m.compute_id(node.network_id).hex()[:16] in err for m in pair)
    assert (await run_cli(capsys, "consensus", twin[:5] if twin[:5] != pair[1].compute_id(node.network_id).hex()[:5]
                          else twin[:6], "--data-dir", dd))[0] == 0
    for bad, says in ((tid[:3], "at least 4 hex digits"), ("zzzz", "is not"), ("ffff" if not tid.startswith("ffff")
                      and not twin.startswith("ffff") else "eeee", "no task id starts with")):
        code, out, err = await run_cli(capsys, "label", bad, "0", "cat", "--wait", "0", "--data-dir", dd)
        assert code == 2 and says in err and err.count("\n") == 1, (bad, err)
    # a task on its way from another node: `label` waits for it (--wait, bounded)
    late = sign_message(make_task(requester=1, nonce=10**9, bounty=0), key(1), node.network_id)
    late_id = late.compute_id(node.network_id).hex()
    def lists():
        return node.rpc.method_stats.get(("tasks_list", "ok"), [0])[0]

    before = lists()
    async with trio.open_nursery() as n:
        async def arrive():  # only once the CLI has looked for it and not found it
            await wait_for(lambda: lists() > before, 30)
            await METHODS["task_post"](node, {"raw": late.raw.hex()})
        n.start_soon(arrive)
        code, out, err = await run_cli(capsys, "label", late_id, "0", "a", "--account", "ann2", "--wait", "30",
                                       "--data-dir", dd)
    assert code == 0 and "accepted" in out, err
    assert "--wait" in (await run_cli(capsys, "label", late_id, "0", "a", "--wait", "-1", "--data-dir", dd))[2]
    # the RPC behind it refuses a bad prefix
    with pytest.raises(Exception, match="prefix"):
        await METHODS["tasks_list"](node, {"prefix": "xyz"})
    # task list: short ids, a date and a countdown
    code, out, err = await run_cli(capsys, "task", "list", "--data-dir", dd)
    assert code == 0 and tid[:12] in out and "(in " in out and out.count("\n") == 5, out
    assert (await run_cli(capsys, "task", "list", "--limit", "0", "--data-dir", dd))[0] == 2


async def test_plain_output_shows_agreement_accuracy_equivocations_names_and_dates(one_node, capsys):
    node, dd = one_node, one_node.dd
    code, out, err = await post(capsys, node, ["a", "b", "c", "d"])
    assert code == 0, err
    assert "deadline 20" in out and "(in 5 s)" in out and "short id" in out  # a date, not epoch ms
    tid = out.split()[1]
    for name, pairs in (("default", ["0", "cat", "1", "dog"]), ("ann2", ["0", "cat", "1", "cat"]),
                        ("ann3", ["0", "cat", "1", "dog", "2", "dog"])):
        code, out, err = await run_cli(capsys, "label", tid, *pairs, "--account", name, "--data-dir", dd)
        assert code == 0, err
    # ann2 changes its mind on item 1: an equivocation
    assert (await run_cli(capsys, "label", tid, "1", "dog", "--account", "ann2", "--data-dir", dd))[0] == 0
    code, out, err = await run_cli(capsys, "consensus", tid[:8], "--data-dir", dd)
    assert code == 0, err
    assert "None" not in out
    rows = {int(l.split()[0]): l for l in out.splitlines() if l[:5].strip().isdigit()}
    assert rows[3].split()[1] == "-" and "no votes yet" in rows[3]
    assert rows[0].split()[1:4] == ["cat", rows[0].split()[2], "1.000"]  # agreement column
    assert "annotator" in out and "accuracy" in out
    for name in ("default", "ann2", "ann3"):
        assert any(l.startswith(name) for l in out.splitlines()), name
    assert "ann2 on item 1" in out  # the equivocation, by name
    # certified: rewards and reputation by local account name
    await advance(node.test_clock, node.tasks[bytes.fromhex(tid)].deadline + 5_000)
    await wait_for(lambda: node.finality.is_certified(bytes.fromhex(tid)), 30)
    for verb in ("rewards", "reputation"):
        code, out, err = await run_cli(capsys, verb, "--data-dir", dd)
        assert code == 0, err
        assert "ann3" in out and pk(53).hex() not in out, out


async def test_duplicate_posts_are_refused_unless_allowed(one_node, capsys):
    node, dd = one_node, one_node.dd
    assert (await post(capsys, node, ["x", "y"]))[0] == 0
    code, out, err = await post(capsys, node, ["x", "y"], name="again.jsonl")
    assert code == 2 and "already posted by req as task" in err and "--allow-duplicate" in err
    assert err.count("\n") == 1 and len(node.tasks) == 1
    code, out, err = await post(capsys, node, ["x", "y"], "--allow-duplicate", name="again.jsonl")
    assert code == 0 and len(node.tasks) == 2, err
    assert (await post(capsys, node, ["x", "z"]))[0] == 0  # other items: another task


async def test_blob_files_are_imported_with_progress_on_a_terminal(one_node, capsys, monkeypatch):
    import io

    from node.cli import progress

    node, dd = one_node, one_node.dd
    pics = dd.parent / "pics"
    pics.mkdir()
    for i in range(40):
        (pics / f"{i}.png").write_bytes(bytes([i]) * (100 + i))

    class Tty(io.StringIO):
        def isatty(self):
            return True

    tty = Tty()
    monkeypatch.setattr(progress.sys, "stderr", tty)
    code, out, err = await post(capsys, node, [{"file": f"pics/{i}.png"} for i in range(40)])
    assert code == 0, err
    drawn = tty.getvalue()
    assert "copying files into the node's blob store" in drawn and "40/40 (100%)" in drawn
    assert drawn.endswith("\r\x1b[K")  # the line is erased at the end
    tid = bytes.fromhex(out.split()[1])
    assert [it.size for it in node.tasks[tid].items] == [100 + i for i in range(40)]
    # never with --json, never without a terminal
    tty.truncate(0)
    tty.seek(0)
    code, out, err = await post(capsys, node, [{"file": "pics/1.png"}], "--json", name="one.jsonl")
    assert code == 0 and tty.getvalue() == "" and json.loads(out)["items"] == 1
    # the RPC behind it: a limit and clear errors
    for bad in ({}, {"files": []}, {"files": [{"file": "rel.png"}]}, {"files": [{"x": 1}] * 2},
                {"files": [{"file": "/x"}] * 65}):
        with pytest.raises(Exception) as e:
            await METHODS["blob_import"](node, bad)
        assert getattr(e.value, "code", None) == -32602, (bad, e.value)


# ------------------------------------------------------------------ Label Studio, both ways


async def test_label_studio_export_checked_by_the_sdk_and_round_trip(one_node, capsys):
    """Export: one annotation per annotator (with its account), the labeling config next to the
    export, checked with label-studio-sdk; blob items have a URL. Import: `task post` of the
    export gives the same labels per annotator, `aggregate` of it the node's consensus."""
    from label_studio_sdk.label_interface import LabelInterface  # the test extra installs it

    node, dd = one_node, one_node.dd
    work = dd.parent
    (work / "cat.png").write_bytes(b"\x89PNG fake cat")
    lines = ["a photo of a cat", "a photo of a dog", "a photo of a bird", "nothing", {"file": "cat.png"}]
    code, out, err = await post(capsys, node, lines, "--json")
    assert code == 0, err
    tid = json.loads(out)["task_id"]
    votes = {"default": ["0", "cat", "1", "dog", "2", "dog", "4", "cat"], "ann2": ["0", "cat", "1", "dog", "2", "cat"],
             "ann3": ["0", "dog", "1", "dog", "4", "cat"]}
    for name, pairs in votes.items():
        assert (await run_cli(capsys, "label", tid, *pairs, "--account", name, "--data-dir", dd))[0] == 0
    assert (await run_cli(capsys, "label", tid, "0", "cat", "--account", "ann3", "--data-dir", dd))[0] == 0  # equivocates
    exp = work / "ls.json"
    code, out, err = await run_cli(capsys, "export", tid[:10], "--format", "labelstudio", "--out", exp, "--data-dir", dd)
    assert code == 0, err
    cfg_file = work / "ls.label_config.xml"
    assert cfg_file.exists() and str(cfg_file) in out and "LOCAL_FILES_DOCUMENT_ROOT=" in out
    tasks = json.loads(exp.read_text())
    li = LabelInterface(cfg_file.read_text())
    assert li.get_control("label") is not None
    assert {o.tag for o in li.objects} == {"Text", "Image"}  # a task of mixed kinds shows both
    for t in tasks:
        for obj in li.objects:  # every object tag finds its data
            assert t["data"].get(obj.value_name) is not None, (obj.value_name, t["data"])
        for a in t["annotations"]:
            assert li.validate_annotation(a), a
        for p in t.get("predictions", []):
            assert li.validate_prediction(p, return_errors=True) == [], p
    img = tasks[4]["data"]
    assert img["text"] == "" and img["image"].startswith("/data/local-files/?d=") and img["media_type"] == "image/png"
    blob_root = re.search(r"LOCAL_FILES_DOCUMENT_ROOT=(\S+)", out).group(1)
    served = Path(blob_root) / img["image"].split("?d=")[1]  # what Label Studio's local files serve
    assert served.read_bytes() == b"\x89PNG fake cat"
    by_item = {t["meta"]["item"]: {a["labelmesh"]["name"]: a["result"][0]["value"]["choices"][0]
                                   for a in t["annotations"]} for t in tasks}
    # ann3 equivocated on item 0: not an annotation there; everything else, one per annotator
    assert by_item[0] == {"default": "cat", "ann2": "cat"}
    assert by_item[2] == {"default": "dog", "ann2": "cat"} and by_item[3] == {}
    assert all(a["labelmesh"]["account"] == pk({"default": 51, "ann2": 52, "ann3": 53}[a["labelmesh"]["name"]]).hex()
               for t in tasks for a in t["annotations"])
    assert "predictions" not in tasks[3] and tasks[0]["predictions"][0]["result"][0]["value"]["choices"] == ["cat"]

    # import 1: `task post` of the export, on this node (same items: --allow-duplicate)
    code, out, err = await run_cli(capsys, "task", "post", exp, "--labels", "cat,dog,bird", "--account", "req",
                                   "--allow-duplicate", "--json", "--data-dir", dd)
    assert code == 0, err
    r = json.loads(out)
    assert r["imported"] == {"accounts": {"ann2": 3, "ann3": 2, "default": 4}, "skipped": []}
    tid2 = bytes.fromhex(r["task_id"])
    assert node.tasks[tid2].items == node.tasks[bytes.fromhex(tid)].items  # the blob item too, by hash

    def labels_of(task_hex):
        got = {}
        for b in node.store.task_message_ids(bytes.fromhex(task_hex), 2):
            from protocol.messages import decode_message
            body = decode_message(node.store.get(b), node.params).body
            for i, l in body.labels:
                got.setdefault(body.annotator, {}).setdefault(i, set()).add(l)
        return {a: {i: ls.pop() for i, ls in m.items() if len(ls) == 1} for a, m in got.items()}

    first, second = labels_of(tid), labels_of(tid2.hex())
    first[pk(53)] = {i: l for i, l in first[pk(53)].items() if i != 0}  # the equivocated vote is not exported
    assert second == first

    # import 2: `aggregate` of the export gives the node's consensus labels (all accounts are fresh: equal weights)
    o = work / "agg.csv"
    code, out, err = await run_cli(capsys, "aggregate", "--answers", exp, "--out", o)
    assert code == 0, err
    offline = dict(line.split(",")[:2] for line in o.read_text().splitlines()[1:])
    cons = await METHODS["consensus_get"](node, {"task_id": tid})
    assert {str(it["item"]): it["label"] for it in cons["items"] if it["votes"]} == offline

    # bad imports are one line each
    for text, says in (("{}", "non-empty JSON array"), ("[1]", "'data' object"),
                       ('[{"data": {"image": "https://x/y.png"}}]', "does not download"),
                       ('[{"data": {"text": "t"}, "annotations": [{"result": [{"type": "choices", '
                        '"value": {"choices": ["cat", "dog"]}}]}]}]', "exactly one label"),
                       ('[{"data": {"text": "t"}, "annotations": [{"completed_by": 1, "result": [{"type": "choices", '
                        '"value": {"choices": ["zebra"]}}]}]}]', "labels that --labels lacks")):
        bad = work / "bad.json"
        bad.write_text(text)
        code, out, err = await run_cli(capsys, "task", "post", bad, "--labels", "cat,dog", "--account", "req",
                                       "--data-dir", dd)
        assert code == 2 and says in err and err.count("\n") == 1, (text, err)


async def test_task_show_items_todo_and_redundancy_notes(one_node, capsys):
    """`task show` (votes against the redundancy, your labels, a countdown), `task items --todo`
    (what an account still has to label, items short of votes first) and `label`'s note when an
    item already had the votes it asks for."""
    node, dd = one_node, one_node.dd
    code, out, err = await post(capsys, node, ["first", "second", "third", "fourth"], "--redundancy", "2", "--quiet")
    assert code == 0, err
    tid = out.strip()
    assert len(tid) == 64  # --quiet: the id alone
    for name, pairs in (("ann2", ["0", "cat", "1", "dog"]), ("ann3", ["0", "cat"])):
        assert (await run_cli(capsys, "label", tid, *pairs, "--account", name, "--data-dir", dd))[0] == 0
    # item 0 has 2 votes (= redundancy): default is guided to 1, 2, 3 only
    code, out, err = await run_cli(capsys, "task", "items", tid[:6], "--todo", "--account", "default", "--data-dir", dd)
    assert code == 0, err
    listed = [int(l.split()[0]) for l in out.splitlines()[1:] if l.strip()[:1].isdigit()]
    assert listed == [1, 2, 3] and "votes 1/2" in out, out
    code, out, err = await run_cli(capsys, "task", "items", tid[:6], "--todo", "--all", "--account", "default",
                                   "--json", "--data-dir", dd)
    assert [it["item"] for it in json.loads(out)["items"]] == [0, 1, 2, 3]
    code, out, err = await run_cli(capsys, "task", "items", tid[:6], "--todo", "--account", "ann2", "--data-dir", dd)
    assert [int(l.split()[0]) for l in out.splitlines()[1:] if l.strip()[:1].isdigit()] == [2, 3]
    # labelling an item that had its votes: accepted, with a note on stderr
    code, out, err = await run_cli(capsys, "label", tid[:6], "0", "dog", "2", "cat", "--data-dir", dd)
    assert code == 0 and "accepted" in out and "item 0 already had the votes" in err, err
    # task show: votes/redundancy, the consensus, your label, a date with a countdown
    code, out, err = await run_cli(capsys, "task", "show", tid[:6], "--data-dir", dd)
    assert code == 0, err
    assert "deadline" in out and "(in " in out and "you        default: labelled 2 items, 2 left" in out
    rows = {int(l.split()[0]): l for l in out.splitlines() if l[:5].strip().isdigit()}
    assert rows[0].split()[1] == "3/2" and rows[0].split()[2] == "cat" and " dog " in rows[0]
    assert rows[3].split()[1:3] == ["0/2", "-"] and "fourth" in rows[3]
    code, out, err = await run_cli(capsys, "task", "show", tid[:6], "--account", "ann3", "--limit", "1", "--data-dir", dd)
    assert code == 0 and "ann3: labelled 1 items, 3 left" in out and "not shown (--offset 1)" in out, out
    # bad input: one line each
    for argv, says in ((["task", "items", tid, "--todo"], "--todo needs --account"),
                       (["task", "items", tid, "--limit", "0"], "--limit"),
                       (["task", "show", tid, "--limit", "501"], "--limit"),
                       (["task", "show", tid, "--account", "nobody"], "nobody")):
        code, out, err = await run_cli(capsys, *argv, "--data-dir", dd)
        assert code == 2 and says in err and err.count("\n") == 1, (argv, err)
    with pytest.raises(Exception) as e:
        await METHODS["task_items"](node, {"task_id": tid, "needed": "yes"})
    assert e.value.code == -32602


async def test_new_rpc_params_refuse_bad_input(one_node):
    node = one_node
    r = await METHODS["task_post"](node, {"account": "req", "labels": ["a", "b"], "items": ["x"]})
    tid = r["task_id"]
    for method, params in (("task_export", {"task_id": tid, "format": "labelstudio", "blob_url": "x" * 1001}),
                           ("task_export", {"task_id": tid, "format": "labelstudio", "blob_url": 5}),
                           ("task_post", {"account": "req", "labels": ["a", "b"], "items": ["x"],
                                          "allow_duplicate": "no"}),
                           ("tasks_list", {"prefix": "g" * 4}), ("tasks_list", {"prefix": "a" * 65}),
                           ("task_items", {"task_id": tid, "needed": 1})):
        with pytest.raises(Exception) as e:
            await METHODS[method](node, params)
        assert getattr(e.value, "code", None) == -32602, (method, params, e.value)
    # the refusal of a duplicate names the earlier task (-32000, data.duplicate_of)
    with pytest.raises(Exception) as e:
        await METHODS["task_post"](node, {"account": "req", "labels": ["a", "b"], "items": ["x"],
                                          "allow_duplicate": False})
    assert e.value.code == -32000 and e.value.data["duplicate_of"] == tid
