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
verify, an unexpected receipt was sent, or an event is in the log twice. The counting per
Message-ID (log, state records, Maildir) is integration/count_sinks.py's.
"""
import argparse
import collections
import datetime
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from count_sinks import log_events, maildir_ids, norm, state_records  # noqa: E402

# Per role: the records' extension (rec/ROW.EXT, out/ROW.EXT), the receipts it issues, what it
# is given, whom a receipt for something never accepted would be for, and how many problem lines
# (of all roles so far) the lines about lost messages may fill.
ROLES = {
    "access": ("acc", "accettazioni", "submissions", "submissions the client never saw accepted", 5),
    "reception": ("rx", "prese in carico", "envelopes", "envelopes never accepted", 8),
    "delivery": ("dx", "avvenute consegne", "envelopes", "envelopes never accepted", 12),
}


def tally(role, recs, by, checks, rp, stored=None):
    """One role of one row: of `recs` (milter_load / faults_lmtp.py records), the accepted ones
    each need a receipt in `by` (Message-ID -> receipts' Message-IDs) and every one of
    `checks(record)` ([(what, count, good)]); else it is lost. Problems are added to `rp`.
    `stored` (Message-ID -> copies): the envelopes stored, and the copies beyond one."""
    _ext, receipts_are, sent_are, stray_for, cap = ROLES[role]
    ok = [r for r in recs if r["status"] == "accept"]
    t = {"sent": len(recs), "accepted": len(ok), "receipts": 0, "dups": 0, "lost": 0,
         "stored": 0, "extra": 0}
    for r in ok:
        m = r["msgid"]
        ids = by.get(m, [])
        if stored is not None and stored[m]:
            t["stored"] += 1
            t["extra"] += stored[m] - 1
        if ids:
            t["receipts"] += 1
            t["dups"] += len(ids) - 1
            if len(set(ids)) > 1:
                rp.append(f"{role} {m}: {len(set(ids))} different {receipts_are}")
        found = checks(r)
        if not ids or not all(good for _what, _n, good in found):
            t["lost"] += 1
            if len(rp) < cap:
                rp.append(f"{role} {m}: receipts {len(ids)}" + "".join(f", {w} {n}" for w, n, _g in found))
    t["refused"] = len(recs) - len(ok)
    if t["refused"]:
        rp.append(f"{role}: {t['refused']} {sent_are} never accepted: "
                  f"{collections.Counter(r['status'] for r in recs if r['status'] != 'accept')}")
    t["stray"] = sum(len(by.get(r["msgid"], [])) for r in recs if r["status"] != "accept")
    if t["stray"]:
        rp.append(f"{role}: {t['stray']} {receipts_are} for {stray_for}")
    t["ok"] = ok
    return t


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
    stored = maildir_ids(a.maildir) if a.maildir else collections.Counter()

    # the state store's envelope records
    env_by = state_records(os.path.join(W, "env-records.jsonl"))

    # the legal log
    log = log_events(a.log)
    log_acc = log.msgid["accettazione"]
    log_pic = log.pec_id["presa-in-carico"]
    log_ac = log.pec_id["avvenuta-consegna"]
    twice = [k for k, n in log.keys.items() if n > 1]
    if twice:
        problems.append(f"{len(twice)} events recorded twice in the log, e.g. {twice[:2]}")

    # per role: what each accepted record needs besides its receipt, and the receipts
    checks = {
        "access": lambda r: [("envelope", r["body"], r["body"] > 0),
                             ("records", env_by[r["msgid"]], env_by[r["msgid"]] == 1),
                             ("log", log_acc[r["msgid"]], log_acc[r["msgid"]] == 1)],
        "reception": lambda r: [("log", log_pic[r["msgid"]], log_pic[r["msgid"]] == 1)],
        "delivery": lambda r: [("stored", stored[r["msgid"]], stored[r["msgid"]] > 0),
                               ("log", log_ac[r["msgid"]], log_ac[r["msgid"]] == 1)],
    }
    receipts = {"access": acc_by, "reception": pic_by, "delivery": ac_by}

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
        recs = {"access": acc, "reception": rx,
                "delivery": read_records(os.path.join(W, "rec", row + ".dx"))}
        bad = False
        dups = 0
        for role, (ext, *_rest) in ROLES.items():
            if recs[role] is None:
                continue   # no delivery point in this row
            t = tally(role, recs[role], receipts[role], checks[role], rp,
                      stored if role == "delivery" else None)
            if role == "access":
                cell = sum(1 for r in t["ok"] if r["body"] > 0)
            elif role == "delivery":
                cell = f"{t['stored']} (+{t['extra']} copies)" if t["extra"] else t["stored"]
                if t["extra"]:
                    # documented: a 4xx after storing (receipt neither issued nor kept) lets the
                    # MTA's retry store a second copy; the receipt is still issued once
                    most = max(stored[r["msgid"]] for r in t["ok"])
                    rp.append(f"delivery: {t['extra']} extra copies in the mailbox, up to {most} of one "
                              "envelope (not failed: the README documents that the MTA's retry after a 451 "
                              "given once the message is stored may store it again; the receipt stays once)")
            else:
                cell = "-"
            out = open(os.path.join(W, "out", f"{row}.{ext}"), encoding="utf-8", errors="replace").read()
            table.append((row, role, t["sent"], t["accepted"], cell, t["receipts"], t["dups"], t["lost"],
                          kv(out, "retried"), ""))
            bad = bad or bool(t["lost"] or t["refused"] or t["stray"])
            dups += t["dups"]
        bad = bad or [x for x in rp if "different" in x]
        verdicts[row] = "FAIL" if bad else ("pass (duplicates: %d)" % dups if dups else "pass")
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
