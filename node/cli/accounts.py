"""``labelmesh account new | list | show | export | import``: the node's local accounts.
Keys are never printed, except by ``account export``, which says so on stderr."""
from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from pathlib import Path

from .common import EXIT_UNAVAILABLE, CliError, call, out

EXPORT_FORMAT = 1


def _keystore(args):
    from ..keystore import Keystore

    return Keystore(Path(args.data_dir))


def _account_entry(ks, name: str) -> dict:
    for a in ks.list():
        if a["name"] == name:
            return a
    raise CliError(f"no account named {name!r} in {ks.dir}; see `labelmesh account list`")


def _new_passphrase(args) -> str | None:
    """The passphrase to encrypt a new key with: None lets the keystore use
    $LABELMESH_PASSPHRASE (if set); --encrypt without it asks on the terminal."""
    from ..keystore import ENV_PASSPHRASE

    if os.environ.get(ENV_PASSPHRASE) or not getattr(args, "encrypt", False):
        return None
    if not sys.stdin.isatty():
        raise CliError(f"--encrypt needs a passphrase: set {ENV_PASSPHRASE} or run it on a terminal")
    pw = getpass.getpass("passphrase for the new key: ")
    if not pw or pw != getpass.getpass("again: "):
        raise CliError("the passphrases are empty or differ; nothing was created")
    return pw


def unlock_passphrase(ks, name: str) -> str | None:
    """For an encrypted account without $LABELMESH_PASSPHRASE: ask on the terminal."""
    from ..keystore import ENV_PASSPHRASE

    if os.environ.get(ENV_PASSPHRASE) or not ks.is_encrypted(name) or not sys.stdin.isatty():
        return None  # the keystore says what is missing
    return getpass.getpass(f"passphrase of account {name}: ")


def _describe_created(ks, name: str, pk: bytes) -> tuple[dict, str]:
    enc = any(a["name"] == name and a.get("encrypted") for a in ks.list())
    return ({"name": name, "public_key": pk.hex(), "encrypted": enc},
            f"  public key {pk.hex()}\n  key file   {ks.dir / (name + '.json')} (0600"
            + (", encrypted with your passphrase)" if enc else ", not encrypted)"))


def cmd_account_new(args) -> int:
    ks = _keystore(args)
    pk = ks.create(args.name, passphrase=_new_passphrase(args))
    obj, text = _describe_created(ks, args.name, pk)
    out(args, obj, f"created account {args.name}\n{text}")
    return 0


def cmd_account_list(args) -> int:
    accounts = _keystore(args).list()
    if args.json:
        print(json.dumps({"accounts": accounts}))
        return 0
    if not accounts:
        print(f"no accounts in {Path(args.data_dir) / 'accounts'}; create one with `labelmesh account new NAME`")
        return 0
    w = max(len(a["name"]) for a in accounts)
    print("\n".join([f"{'name':<{w}}  {'public key':<64}  key"] +
                     [f"{a['name']:<{w}}  {a['public_key']}  {'encrypted' if a.get('encrypted') else 'plain'}"
                      for a in accounts]))
    return 0


def cmd_account_show(args) -> int:
    ks = _keystore(args)
    a = _account_entry(ks, args.name)
    shown = {"name": a["name"], "public_key": a["public_key"], "key_file": str(ks.dir / f"{a['name']}.json"),
           "encrypted": bool(a.get("encrypted"))}
    extra = _account_standing(args, a["public_key"])
    shown.update(extra)
    lines = [f"account     {a['name']}", f"public key  {a['public_key']}",
             f"key file    {shown['key_file']} ({'encrypted' if shown['encrypted'] else 'not encrypted'}; never printed, "
             "`labelmesh account export` to copy it)"]
    if "rewards" in extra:
        lines.append(f"rewards     {extra['rewards']:,} credits from certified tasks")
    if extra.get("reputation"):
        lines.append("reputation  " + ", ".join(f"{r['domain'] or '*'} {r['weight_f']:.4f}" for r in extra["reputation"]))
    if "node" in extra:
        lines.append(f"node        {extra['node']}")
    out(args, shown, "\n".join(lines))
    return 0


def _account_standing(args, public_key: str) -> dict:
    """Rewards and reputation from the running node, if there is one (else a note)."""
    try:
        rw = call(args, "rewards_get", {"account": public_key})
        rp = call(args, "reputation_get", {"account": public_key})
    except CliError as e:
        return {"node": f"not reachable ({e})" if e.code == EXIT_UNAVAILABLE else f"no rewards/reputation: {e}"}
    total = sum(t["reward"] for t in rw.get("totals", []) if t["account"] == public_key)
    return {"rewards": total, "reputation": [{"domain": r["domain"], "weight": r["weight"], "weight_f": r["weight_f"]}
                                             for r in rp.get("reputation", []) if r["account"] == public_key]}


def cmd_account_export(args) -> int:
    from ..keystore import write_private

    ks = _keystore(args)
    _account_entry(ks, args.name)
    sk = ks.signing_key(args.name, passphrase=unlock_passphrase(ks, args.name))
    doc = {"labelmesh_account": EXPORT_FORMAT, "name": args.name, "public_key": bytes(sk.verify_key).hex(),
           "seed": bytes(sk).hex()}
    text = json.dumps(doc) + "\n"
    print(f"labelmesh: WARNING: this is the secret key of account {args.name!r}. Anyone who holds it can sign "
          "as this account. Keep it offline; import it with `labelmesh account import`.", file=sys.stderr)
    if args.out:
        try:
            write_private(Path(args.out), text.encode())
        except FileExistsError:
            raise CliError(f"{args.out} exists; export into a new file") from None
        except OSError as e:
            raise CliError(f"cannot write {args.out}: {e.strerror}") from None
        print(f"exported account {args.name} to {args.out} (mode 0600)", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def _parse_export(text: str) -> tuple[bytes, str | None]:
    """(seed, public key hex or None) from an export document or a bare 64-hex seed."""
    text = text.strip()
    if text.startswith("{"):
        try:
            d = json.loads(text)
            if d.get("labelmesh_account") != EXPORT_FORMAT:
                raise ValueError("not a labelmesh account export")
            seed, pk = bytes.fromhex(d["seed"]), d.get("public_key")
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise CliError(f"cannot read the account export: {e}") from None
    else:
        try:
            seed, pk = bytes.fromhex(text), None
        except ValueError:
            raise CliError("expected an account export (JSON from `labelmesh account export`) or a 64-hex-digit seed") from None
    if len(seed) != 32:
        raise CliError(f"a seed is 32 bytes (64 hex digits), got {len(seed)} bytes")
    return seed, pk


def cmd_account_import(args) -> int:
    import nacl.signing

    src = args.file or "-"
    passphrase = _new_passphrase(args)
    try:
        text = sys.stdin.read() if src == "-" else Path(src).read_text()
    except OSError as e:
        raise CliError(f"cannot read {'stdin' if src == '-' else src}: {e.strerror or e}") from None
    seed, pk_claimed = _parse_export(text)
    pk = bytes(nacl.signing.SigningKey(seed).verify_key)
    if pk_claimed is not None and pk_claimed != pk.hex():
        raise CliError("the export's public_key does not match its seed; the file is damaged")
    ks = _keystore(args)
    for a in ks.list():
        if a["public_key"] == pk.hex():
            raise CliError(f"this key is already here as account {a['name']!r}")
    ks.create(args.name, seed=seed, passphrase=passphrase)
    obj, text = _describe_created(ks, args.name, pk)
    out(args, obj, f"imported account {args.name}\n{text}")
    return 0


def add_parsers(sub, common: argparse.ArgumentParser) -> None:
    """Register account and its verbs on ``sub``."""
    s = sub.add_parser("account", parents=[common], help="the node's local accounts (keys are never printed "
                                                          "except by `export`)")
    asub = s.add_subparsers(dest="account_cmd", metavar="VERB")
    asub.required = True
    enc_help = ("encrypt the key with a passphrase asked on the terminal (automatic when "
                "$LABELMESH_PASSPHRASE is set, which is then the passphrase)")
    a = asub.add_parser("new", parents=[common], help="create an account with a fresh random key")
    a.add_argument("name", help="account name: 1-64 letters, digits, '_', '.', '-'")
    a.add_argument("--encrypt", action="store_true", help=enc_help)
    a.set_defaults(fn=cmd_account_new)
    a = asub.add_parser("list", parents=[common], help="names and public keys")
    a.set_defaults(fn=cmd_account_list)
    a = asub.add_parser("show", parents=[common], help="one account: public key, key file, and (if the node runs) "
                                                        "rewards and reputation")
    a.add_argument("name")
    a.set_defaults(fn=cmd_account_show)
    a = asub.add_parser("export", parents=[common], help="print (or --out FILE) the account's SECRET key, for "
                                                          "`account import` elsewhere")
    a.add_argument("name")
    a.add_argument("--out", metavar="FILE", help="write to a new file (mode 0600) instead of stdout")
    a.set_defaults(fn=cmd_account_export)
    a = asub.add_parser("import", parents=[common], help="add an account from an export (or a 64-hex seed)")
    a.add_argument("name", help="name of the account here")
    a.add_argument("file", nargs="?", help="the export file (default: read stdin)")
    a.add_argument("--encrypt", action="store_true", help=enc_help)
    a.set_defaults(fn=cmd_account_import)

