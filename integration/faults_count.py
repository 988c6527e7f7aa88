#!/usr/bin/env python3
"""integration/faults_count.py: the counting half of integration/faults.sh (the fault matrix).

Reads what faults.sh left in its work dir (--work):
  rows.tsv                 row, what the fault did, what was observed
  rec/ROW.acc, rec/ROW.rx  milter_load --record: index, Message-ID, final status, tries,
                           body-replacement packets, Message-ID set by the milter
  out/ROW.acc, out/ROW.rx  milter_load's summary line (retried=)
  inspect.jsonl            `pec-milter inspect --json --trust ...` of every message at the sink
  env-records.jsonl        the state store's envelope records (pec:env:*), one JSON each
and the legal log (--log: NODE/*.jsonl). Prints the table (also to WORK/table.txt), writes the
report (--report, markdown; empty: none), exits 1 when anything was lost, a receipt does not
verify, an unexpected receipt was sent, or an event is in the log twice.
"""
import argparse
import collections
import datetime
import glob
import json
import os
import sys


def norm(mid):
    return (mid or "").strip().strip("<>").strip().lower()


def kv(line, key):
    for part in line.split():
        if part.startswith(key + "="):
            return part.split("=", 1)[1]
    return "?"


def read_records(path):
    recs = []
    if not os.path.exists(path):
        return None
    for line in open(path, encoding="utf-8", errors="replace"):
        f = line.rstrip("\n").split("\t")
        if len(f) == 4:   # faults_lmtp.py: no modifications to report
            f += ["0", "-"]
        if len(f) < 6:
            continue
        recs.append({"i": int(f[0]), "msgid": norm(f[1]), "status": f[2], "tries": int(f[3]),
                     "body": int(f[4]), "env": norm(f[5])})
    return recs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True)
    ap.add_argument("--log", required=True)
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--mode", default="quick")
    ap.add_argument("--machine", default="?")
    ap.add_argument("--commit", default="?")
    ap.add_argument("--elapsed", default="?")
    ap.add_argument("--rate", default="?")
    ap.add_argument("--hold", default="?")
    ap.add_argument("--report", default="")
    ap.add_argument("--maildir", default="")
    ap.add_argument("--failed-checks", type=int, default=0,
                    help="checks of faults.sh that failed before the counting")
    a = ap.parse_args()
    W = a.work

    rows = []
    for line in open(os.path.join(W, "rows.tsv"), encoding="utf-8"):
        r, what, obs = (line.rstrip("\n").split("\t") + ["", ""])[:3]
        rows.append((r, what, obs))

    # every message at the sink, as inspect saw it
    sink = []
    for line in open(os.path.join(W, "inspect.jsonl"), encoding="utf-8"):
        line = line.strip()
        if line:
            sink.append(json.loads(line))
    files = [f.rstrip("\n") for f in open(os.path.join(W, "sink-files.txt"))]
    problems = []
    notes = []
    unread = sorted(set(files) - {m.get("file") for m in sink})
    # a transfer cut when the sink was stopped (the reinject row) leaves a partial file: the
    # client had no 250 for it, so it is not a message that passed; anything else unreadable is
    cut_path = os.path.join(W, "sink-cut.txt")
    cut = {f.rstrip("\n") for f in open(cut_path)} if os.path.exists(cut_path) else set()
    for f in unread:
        size = os.path.getsize(f) if os.path.exists(f) else -1
        if f in cut:
            notes.append(f"[reinject] {os.path.basename(f)}: a transfer cut by the sink's stop "
                         f"({size} bytes, unreadable, never acknowledged)")
        else:
            problems.append(f"{f}: unreadable at the sink ({size} bytes)")

    # receipts by the Message-ID of what they are about
    acc_by = collections.defaultdict(list)   # original msgid -> [receipt Message-ID]
    pic_by = collections.defaultdict(list)   # envelope identificativo -> [receipt Message-ID]
    ac_by = collections.defaultdict(list)    # envelope identificativo -> [avvenuta-consegna]
    unsigned = []
    other = collections.Counter()
    for m in sink:
        sig = (m.get("signature") or {}).get("status")
        d = m.get("daticert") or {}
        if sig != "valid":
            unsigned.append((m.get("file"), m.get("kind"), (m.get("signature") or {}).get("reason")))
        kind = m.get("kind")
        if kind == "accettazione":
            acc_by[norm(d.get("msgid"))].append(norm(m.get("message_id")))
        elif kind == "presa-in-carico":
            pic_by[norm(d.get("identificativo"))].append(norm(m.get("message_id")))
        elif kind == "avvenuta-consegna":
            ac_by[norm(d.get("identificativo"))].append(norm(m.get("message_id")))
        else:
            other[kind] += 1
    if unsigned:
        problems.append(f"{len(unsigned)} messages at the sink do not verify, e.g. {unsigned[:2]}")
    if other:
        problems.append(f"unexpected messages at the sink: {dict(other)}")

    # what the delivery point stored: Maildir files by Message-ID
    stored = collections.Counter()
    if a.maildir:
        for root, _dirs, names in os.walk(a.maildir):
            if os.path.basename(root) not in ("new", "cur"):
                continue
            for n in names:
                head = open(os.path.join(root, n), "rb").read(65536).split(b"\r\n\r\n", 1)[0]
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"message-id:"):
                        stored[norm(line[11:].decode("latin-1"))] += 1
                        break

    # the state store's envelope records
    env_by = collections.Counter()
    p = os.path.join(W, "env-records.jsonl")
    for line in open(p, encoding="utf-8", errors="replace") if os.path.exists(p) else []:
        line = line.strip()
        if line.startswith("{"):
            try:
                env_by[norm(json.loads(line).get("original_msgid"))] += 1
            except ValueError:
                pass

    # the legal log
    log_acc = collections.Counter()
    log_pic = collections.Counter()
    log_ac = collections.Counter()
    log_keys = collections.Counter()
    for f in glob.glob(os.path.join(a.log, "*", "*.jsonl")):
        for line in open(f, encoding="utf-8", errors="replace"):
            try:
                e = json.loads(line)
            except ValueError:
                continue
            ev = e.get("event")
            if ev is None or not e.get("pec_id"):
                continue   # a file's own records (apertura, chiusura) are about no message
            log_keys[(e.get("pec_id"), ev, (e.get("about") or "").lower())] += 1
            if ev == "accettazione":
                log_acc[norm(e.get("msgid"))] += 1
            elif ev == "presa-in-carico":
                log_pic[norm(e.get("pec_id"))] += 1
            elif ev == "avvenuta-consegna":
                log_ac[norm(e.get("pec_id"))] += 1
    twice = [k for k, n in log_keys.items() if n > 1]
    if twice:
        problems.append(f"{len(twice)} events recorded twice in the log, e.g. {twice[:2]}")

    table = []   # (row, role, sent, accepted, envelopes, receipts, dups, lost, retried, note)
    verdicts = {}
    for row, what, obs in rows:
        acc = read_records(os.path.join(W, "rec", row + ".acc"))
        rx = read_records(os.path.join(W, "rec", row + ".rx"))
        if acc is None or rx is None:
            table.append((row, "both", "-", "-", "-", "-", "-", "-", "-", "not run"))
            verdicts[row] = "not run"
            continue
        rp = []
        # access point
        ok_acc = [r for r in acc if r["status"] == "accept"]
        envelopes = sum(1 for r in ok_acc if r["body"] > 0)
        receipts = dups = lost = 0
        for r in ok_acc:
            ids = acc_by.get(r["msgid"], [])
            if ids:
                receipts += 1
                dups += len(ids) - 1
                if len(set(ids)) > 1:
                    rp.append(f"access {r['msgid']}: {len(set(ids))} different accettazioni")
            lost_here = not ids or r["body"] == 0 or env_by[r["msgid"]] != 1 or log_acc[r["msgid"]] != 1
            if lost_here:
                lost += 1
                if len(rp) < 5:
                    rp.append(f"access {r['msgid']}: receipts {len(ids)}, envelope {r['body']}, "
                              f"records {env_by[r['msgid']]}, log {log_acc[r['msgid']]}")
        refused = len(acc) - len(ok_acc)
        if refused:
            rp.append(f"access: {refused} submissions never accepted: "
                      f"{collections.Counter(r['status'] for r in acc if r['status'] != 'accept')}")
        stray = sum(len(acc_by.get(r["msgid"], [])) for r in acc if r["status"] != "accept")
        if stray:
            rp.append(f"access: {stray} accettazioni for submissions the client never saw accepted")
        out = open(os.path.join(W, "out", row + ".acc"), encoding="utf-8", errors="replace").read()
        table.append((row, "access", len(acc), len(ok_acc), envelopes, receipts, dups, lost,
                      kv(out, "retried"), ""))
        # reception point
        ok_rx = [r for r in rx if r["status"] == "accept"]
        rreceipts = rdups = rlost = 0
        for r in ok_rx:
            ids = pic_by.get(r["msgid"], [])
            if ids:
                rreceipts += 1
                rdups += len(ids) - 1
                if len(set(ids)) > 1:
                    rp.append(f"reception {r['msgid']}: {len(set(ids))} different prese in carico")
            if not ids or log_pic[r["msgid"]] != 1:
                rlost += 1
                if len(rp) < 8:
                    rp.append(f"reception {r['msgid']}: receipts {len(ids)}, log {log_pic[r['msgid']]}")
        rrefused = len(rx) - len(ok_rx)
        if rrefused:
            rp.append(f"reception: {rrefused} envelopes never accepted: "
                      f"{collections.Counter(r['status'] for r in rx if r['status'] != 'accept')}")
        rstray = sum(len(pic_by.get(r["msgid"], [])) for r in rx if r["status"] != "accept")
        if rstray:
            rp.append(f"reception: {rstray} prese in carico for envelopes never accepted")
        out = open(os.path.join(W, "out", row + ".rx"), encoding="utf-8", errors="replace").read()
        table.append((row, "reception", len(rx), len(ok_rx), "-", rreceipts, rdups, rlost,
                      kv(out, "retried"), ""))
        # delivery point
        dx = read_records(os.path.join(W, "rec", row + ".dx"))
        dlost = drefused = dstray = dextra = 0
        if dx is not None:
            ok_dx = [r for r in dx if r["status"] == "accept"]
            dreceipts = ddups = dstored = 0
            for r in ok_dx:
                ids = ac_by.get(r["msgid"], [])
                if stored[r["msgid"]]:
                    dstored += 1
                    dextra += stored[r["msgid"]] - 1
                if ids:
                    dreceipts += 1
                    ddups += len(ids) - 1
                    if len(set(ids)) > 1:
                        rp.append(f"delivery {r['msgid']}: {len(set(ids))} different avvenute consegne")
                if not ids or not stored[r["msgid"]] or log_ac[r["msgid"]] != 1:
                    dlost += 1
                    if len(rp) < 12:
                        rp.append(f"delivery {r['msgid']}: receipts {len(ids)}, stored {stored[r['msgid']]}, "
                                  f"log {log_ac[r['msgid']]}")
            drefused = len(dx) - len(ok_dx)
            if drefused:
                rp.append(f"delivery: {drefused} envelopes never accepted: "
                          f"{collections.Counter(r['status'] for r in dx if r['status'] != 'accept')}")
            dstray = sum(len(ac_by.get(r["msgid"], [])) for r in dx if r["status"] != "accept")
            if dstray:
                rp.append(f"delivery: {dstray} avvenute consegne for envelopes never accepted")
            if dextra:
                # documented: a 4xx after storing (receipt neither issued nor kept) lets the MTA's
                # retry store a second copy; the receipt is still issued once
                most = max(stored[r["msgid"]] for r in ok_dx)
                rp.append(f"delivery: {dextra} extra copies in the mailbox, up to {most} of one envelope "
                          "(not failed: the README documents that the MTA's retry after a 451 given "
                          "once the message is stored may store it again; the receipt stays once)")
            out = open(os.path.join(W, "out", row + ".dx"), encoding="utf-8", errors="replace").read()
            cell = f"{dstored} (+{dextra} copies)" if dextra else dstored
            table.append((row, "delivery", len(dx), len(ok_dx), cell, dreceipts, ddups, dlost,
                          kv(out, "retried"), ""))
            dups += ddups
        bad = (lost or rlost or dlost or refused or rrefused or drefused or stray or rstray or dstray
               or [x for x in rp if "different" in x])
        verdicts[row] = "FAIL" if bad else ("pass (duplicates: %d)" % (dups + rdups) if dups + rdups else "pass")
        problems.extend(f"[{row}] {x}" for x in rp if "not failed" not in x)
        notes.extend(f"[{row}] {x}" for x in rp if "not failed" in x)

    head = ("fault", "role", "sent", "accepted", "envelopes", "receipts", "duplicates", "lost", "retried")
    lines = ["| " + " | ".join(head) + " | verdict |", "|" + "---|" * (len(head) + 1)]
    for t in table:
        lines.append("| " + " | ".join(str(x) for x in t[:9]) + f" | {verdicts.get(t[0], '')} |")
    lines.append("| sentinel | all | - | - | - | - | - | - | - | see e2e-sentinel.sh |")
    text = "\n".join(lines)
    print(text)
    extra = [f"problem: {p}" for p in problems] + [f"note: {p}" for p in notes]
    open(os.path.join(W, "table.txt"), "w").write("\n".join([text] + extra) + "\n")
    for p in extra:
        print(p)
    if a.failed_checks:
        problems.append(f"{a.failed_checks} checks of faults.sh failed before the counting "
                        "(a fault not applied or undone as planned, the outbox not drained, "
                        "log verify...): see its output")
    overall = not problems and all(v != "FAIL" for v in verdicts.values())

    if a.report:
        now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        md = [
            "# Reliability: the fault matrix",
            "",
            "Generated by `integration/faults.sh%s` (issue 16); do not edit by hand." %
            (" --quick" if a.mode == "quick" else ""),
            "",
            f"- date: {now}",
            f"- machine: {a.machine}",
            f"- pec-milter: commit {a.commit} (debug build), Redis state, clamd, index from slapd, "
            "outbox pass every 1 s (grace 3 s), reinjection timeout 2 s",
            f"- run: {a.mode}, per fault {a.n} submissions (access point, milter protocol) and "
            f"{a.n} envelopes of provider B, given both to the reception point (milter protocol) and "
            f"to the delivery point (LMTP, 2 connections, Maildir store); each load paced at {a.rate} messages/s over 4 milter "
            f"connections, faults held {a.hold} s, {a.elapsed} s in all",
            f"- receipts at the sink: {len(sink)}, all verified against the test CAs: "
            f"{'yes' if not unsigned else 'NO (%d do not verify)' % len(unsigned)}; "
            f"`pec-milter log verify`: checked by the script; events twice in the log: {len(twice)}",
            "",
            "The load is `examples/milter_load` at protocol level (no MTA), retrying as an MTA's queue "
            "would: a 4xx or a dropped connection sends the same bytes again after 250 ms "
            "(`--retry-tempfail 400`). *retried* counts those resends. Per accepted submission: "
            "*envelopes* = the milter replaced the body (the busta di trasporto), *receipts* = one "
            "accettazione at the receipts' sink (and one envelope record in the state store, one "
            "record in the legal log); per envelope of provider B accepted by the reception point: "
            "one presa in carico; per envelope accepted by the delivery point: stored in the Maildir "
            "(*envelopes* column; *+N copies*: the same envelope stored again by a retry) and one "
            "avvenuta consegna. "
            "*lost* = an accepted message missing any of these; *duplicates* = the same receipt "
            "(same Message-ID) delivered again, the one window the README documents (\"Exactly "
            "once (the outbox)\": the MTA took it, the process died or the store was unreachable "
            "before it left the outbox).",
            "",
            text,
            "",
            "## What each fault did",
            "",
        ]
        for row, what, obs in rows:
            md.append(f"- **{row}**: {what}. Observed: {obs}. Verdict: {verdicts.get(row, 'not run')}.")
        md.append("- **sentinel** (Redis Sentinel failover): not in this script; see "
                  "`integration/e2e-sentinel.sh`.")
        md += ["", "## Verdict", "",
               ("**pass**: no accepted message lost, every receipt signed and verified, each event "
                "once in the legal log." if overall else "**FAIL**:")]
        for p in problems:
            md.append(f"- {p}")
        if notes:
            md += ["", "Notes (not failures):", ""] + [f"- {p}" for p in notes]
        open(a.report, "w").write("\n".join(md) + "\n")
    return 0 if overall else 1


if __name__ == "__main__":
    sys.exit(main())
