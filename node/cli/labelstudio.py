"""Reading a Label Studio JSON export (the format ``labelmesh export --format labelstudio``
writes, and Label Studio's own "JSON" export): its tasks become task items, its annotations
labels of named annotators. Used by ``task post`` and ``aggregate``.

Rules (each violation is one CliError line naming the task):

- the file is a JSON array of tasks (at most ``MAX_TASKS``, ``MAX_BYTES``), each an object
  with a ``data`` object;
- an item is ``data.text`` (text; an empty text beside a media key is that key's placeholder
  in a task of mixed kinds), else a blob this node can name: ``data.sha256`` +
  ``data.size`` (a labelmesh export), a ``data:`` URI (inline bytes), or a local file path
  (absolute, or relative to the export file) in ``data.image | audio | video``; an http(s)
  URL is refused (the node does not download);
- an annotation is one ``choices`` result with one choice; cancelled ones are skipped; its
  annotator is ``labelmesh.name``, else ``labelmesh.account``, else ``completed_by`` (an id,
  or an object's ``email`` before the ``@``).
"""
from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

from .common import CliError

MAX_BYTES = 1 << 30
MAX_TASKS = 1_000_000
OBJECT_KEYS = ("image", "audio", "video")


@dataclass
class LsExport:
    items: list            # task_post items, in file order
    keys: list[str]        # a name per item: meta.item, else the task id, else its position
    annotations: list      # (item index, annotator, label name)


def looks_like_labelstudio(path: str) -> bool:
    return Path(path).suffix.lower() == ".json"


def _annotator(a: dict) -> str:
    lm = a.get("labelmesh")
    if isinstance(lm, dict):
        for k in ("name", "account"):
            if isinstance(lm.get(k), str) and lm[k]:
                return lm[k]
    cb = a.get("completed_by")
    if isinstance(cb, dict):
        if isinstance(cb.get("email"), str) and cb["email"]:
            return cb["email"].split("@")[0]
        cb = cb.get("id")
    if isinstance(cb, (int, str)) and not isinstance(cb, bool) and str(cb):
        return str(cb)
    return "unknown"


def _choice(a: dict, where: str) -> str | None:
    if a.get("was_cancelled"):
        return None
    res = [r for r in a.get("result") or [] if isinstance(r, dict) and r.get("type") == "choices"]
    if not res:
        return None
    if len(res) > 1:
        raise CliError(f"{where}: an annotation with {len(res)} choices results; labelmesh has one label per item")
    ch = (res[0].get("value") or {}).get("choices")
    if not isinstance(ch, list) or len(ch) != 1 or not isinstance(ch[0], str):
        raise CliError(f"{where}: an annotation must choose exactly one label, got {ch!r}")
    return ch[0]


def _item(data: dict, base: Path, where: str):
    if isinstance(data.get("text"), str) and (data["text"] or not any(data.get(k) for k in OBJECT_KEYS)):
        return {"text": data["text"]}
    if isinstance(data.get("sha256"), str) and isinstance(data.get("size"), int):
        return {"sha256": data["sha256"], "size": data["size"],
                "media_type": data.get("media_type") or "application/octet-stream"}
    for k in OBJECT_KEYS:
        v = data.get(k)
        if not isinstance(v, str):
            continue
        if v.startswith("data:") and ";base64," in v:
            head, b64 = v[5:].split(";base64,", 1)
            try:
                return {"hex": base64.b64decode(b64, validate=True).hex(), "media_type": head or "application/octet-stream"}
            except ValueError:
                raise CliError(f"{where}: data.{k} is not valid base64") from None
        if v.startswith(("http://", "https://")):
            raise CliError(f"{where}: data.{k} is a URL ({v[:60]}); labelmesh does not download: save the file "
                           "and give its path")
        if v.startswith("/data/local-files/?d="):
            v = unquote(v.split("?d=", 1)[1])
            raise CliError(f"{where}: data.{k} is a Label Studio local file ({v}) without sha256/size; give the "
                           "file's path instead")
        p = Path(v) if Path(v).is_absolute() else base / v
        if not p.is_file():
            raise CliError(f"{where}: data.{k} names {p}, which is not a file here")
        return {"file": str(p.resolve())}
    raise CliError(f"{where}: data has no 'text', no sha256/size and no {'/'.join(OBJECT_KEYS)} to post")


def read_labelstudio(path: str) -> LsExport:
    p = Path(path)
    try:
        if p.stat().st_size > MAX_BYTES:
            raise CliError(f"{path}: larger than {MAX_BYTES >> 20} MiB (the limit)")
        doc = json.loads(p.read_text(encoding="utf-8-sig"))
    except OSError as e:
        raise CliError(f"cannot read {path}: {e.strerror or e}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CliError(f"{path}: not a Label Studio JSON export ({e})") from None
    if not isinstance(doc, list) or not doc:
        raise CliError(f"{path}: a Label Studio export is a non-empty JSON array of tasks")
    if len(doc) > MAX_TASKS:
        raise CliError(f"{path}: more than {MAX_TASKS} tasks (the limit)")
    items, keys, anns = [], [], []
    for n, t in enumerate(doc):
        where = f"{path}: task {n}"
        if not isinstance(t, dict) or not isinstance(t.get("data"), dict):
            raise CliError(f"{where}: each task must be an object with a 'data' object")
        items.append(_item(t["data"], p.parent, where))
        meta = t.get("meta") if isinstance(t.get("meta"), dict) else {}
        key = meta.get("item", t.get("id", n))
        keys.append(str(key))
        for a in t.get("annotations") or []:
            if not isinstance(a, dict):
                raise CliError(f"{where}: annotations must be objects")
            label = _choice(a, where)
            if label is not None:
                anns.append((n, _annotator(a), label))
    if len(set(keys)) != len(keys):
        keys = [str(n) for n in range(len(items))]  # ids repeat: name items by position
    return LsExport(items, keys, anns)
