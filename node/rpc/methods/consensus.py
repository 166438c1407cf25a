"""RPC methods of results: consensus, certificates, rewards, reputation."""
from __future__ import annotations

from protocol.finality import encode_certificate
from protocol.messages import KIND_GOLD
from protocol.reputation import compute_earned, compute_weight

from ..params import MAX_LIST, account_param, get_param, hex_param, page_param, task_id_param
from .common import fx


async def current_result(node, tid: bytes):
    """(certificate or None, certified result or None, the result to show: the certified
    one if this node holds its whole set, else the provisional one), aggregated off the
    event loop if the task is big."""
    if not await node.finality.prepare_certified_result(tid):
        await node.prepare_result(tid)
    cert, cres = node.finality.certified_result(tid)  # cached now
    return cert, cres, (cres if cres is not None else node.task_result(tid))


async def consensus_get(node, params):
    """Consensus of a task over the annotation set this node holds (provisional until certified):
    set_root, result_root, per-item label/confidence/agreement/votes, per-annotator labels,
    equivocations, accuracy, score and reward (the task result, PROTOCOL.md 10.5)."""
    tid = task_id_param(node, params)
    cert, cres, res = await current_result(node, tid)
    status = "certified" if cres is not None else ("certified-fetching" if cert is not None else "provisional")
    task = node.tasks[tid]
    names = task.schema.labels
    out = {
        "task_id": tid.hex(), "status": status, "task_status": node.task_status(tid),
        "certificate": _cert_json(node, cert),
        "set_root": res.set_root.hex(), "result_root": res.result_root.hex(),
        "batches": len(res.batch_ids) - len(set(res.batch_ids) & set(node.store.task_message_ids(tid, KIND_GOLD))),
        "pinned": len(res.batch_ids), "gold_items": res.gold_items, "labels": sum(res.votes), "alpha": res.alpha, "alpha_f": fx(res.alpha),
        "refund": res.refund, "bounty": task.bounty,
        "annotators": [{"account": a.account.hex(), "labels": a.labels, "equivocations": a.equivocations,
                        "accuracy": a.accuracy, "accuracy_f": fx(a.accuracy), "score": a.score,
                        "score_f": fx(a.score), "reward": a.reward} for a in res.annotators],
        "equivocations": [{"account": a.hex(), "item": i} for a, i in res.equivocations],
    }
    if get_param(params, "items", bool, True):
        limit, offset = page_param({"limit": params.get("limit", MAX_LIST), "offset": params.get("offset", 0)})
        out["items"] = [
            {"item": i, "label": (names[l] if l >= 0 else None), "label_index": l,
             "confidence": res.confidence[i], "confidence_f": fx(res.confidence[i]),
             "agreement": res.agreement[i], "agreement_f": fx(res.agreement[i]), "votes": res.votes[i]}
            for i, l in list(enumerate(res.label))[offset: offset + limit]]
    return out


def _cert_json(node, cert) -> dict | None:
    if cert is None:
        return None
    weights = dict(node.genesis.validators)
    return {"round": cert.round, "set_root": cert.set_root.hex(), "result_root": cert.result_root.hex(),
            "signers": [m.body.validator.hex() for m in cert.attestations],
            "weight": sum(weights.get(m.body.validator, 0) for m in cert.attestations),
            "total_weight": node.genesis.total_validator_weight}


async def certificate_get(node, params):
    """The finality certificate of a task (if any), encoded (hex) and summarised, plus the finality state;
    with 'ids': true, a page ('limit', 'offset') of the ids the certificate pins."""
    tid = task_id_param(node, params)
    fin = node.finality.machine(tid)
    cert = fin.certificate
    out = {"task_id": tid.hex(), "certified": cert is not None, "certificate": _cert_json(node, cert),
           "encoded": encode_certificate(cert).hex() if cert is not None else None,
           "finality": fin.status()}
    if get_param(params, "ids", bool, False):
        limit, offset = page_param(params)
        pinned = fin.certified_batch_ids  # sorted; None until the certificate and a prevote listing them are here
        out["pinned"] = None if pinned is None else {
            "total": len(pinned), "ids": [i.hex() for i in pinned[offset: offset + limit]],
            "next_offset": offset + limit if offset + limit < len(pinned) else None}
    return out




async def rewards_get(node, params):
    """Rewards from certified tasks: per account per task and totals ({account?: name|hex, task_id?}).
    Uncertified tasks pay nothing yet; they are counted in 'pending_tasks' (so is a certified
    task whose certified result this node cannot reproduce yet: batches still being fetched)."""
    who = account_param(node, params)
    only = hex_param(params, "task_id") if "task_id" in params else None
    rows, totals, refunds, pending = [], {}, 0, 0
    for tid, t in sorted(node.tasks.items(), key=lambda kv: (kv[1].deadline, kv[0])):
        if only is not None and tid != only:
            continue
        paid = node.certified_rewards(tid)
        if paid is None:
            pending += 1
            continue
        refund, annotators = paid
        refunds += refund
        for account, reward, labels, accuracy in annotators:
            if who is not None and account != who:
                continue
            rows.append({"task_id": tid.hex(), "account": account.hex(), "reward": reward, "labels": labels,
                         "accuracy": accuracy, "accuracy_f": fx(accuracy)})
            totals[account.hex()] = totals.get(account.hex(), 0) + reward
    return {"rewards": rows, "totals": [{"account": k, "reward": v} for k, v in
                                        sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))],
            "refunded": refunds, "pending_tasks": pending}


async def reputation_get(node, params):
    """Reputation per (account, domain) from every certified task known now, with the
    weight a new task would give ({account?: name|hex, domain?})."""
    who = account_param(node, params)
    dom = get_param(params, "domain", str, None)
    outcomes = [o for o in (node.task_outcome(t) for t in sorted(node.tasks) if node.finality.is_certified(t))
                if o is not None]
    earned = compute_earned(outcomes)
    keys = set(earned) | {(a, d) for a, d, _ in node.genesis.reputation}
    labels = {}
    for o in outcomes:
        for a in o.annotators:
            labels[(a.account, o.domain)] = labels.get((a.account, o.domain), 0) + a.labels
    rows = []
    for a, d in sorted(keys):
        if (who is not None and a != who) or (dom is not None and d != dom):
            continue
        w = compute_weight(a, d, earned, node.genesis.reputation, node.params)
        rows.append({"account": a.hex(), "domain": d, "earned": earned.get((a, d), 0),
                     "earned_f": fx(earned.get((a, d), 0)), "weight": w, "weight_f": fx(w),
                     "labels": labels.get((a, d), 0)})
    rows.sort(key=lambda r: (-r["weight"], r["account"], r["domain"]))
    return {"reputation": rows, "certified_tasks": len(outcomes), "fresh_weight": node.params.fresh_weight,
            "lag_ms": node.params.reputation_lag_ms}




METHODS = [consensus_get, certificate_get, rewards_get, reputation_get]
