#!/usr/bin/env python3
"""integration/count_sinks.py: receipts, envelopes and records counted per Message-ID, for the
end-to-end scripts that look for losses and duplicates.

What it reads (every Message-ID normalised: no angle brackets, lowercase):
  the receipts' sink   an smtp-sink -d directory (one file per transaction): each accettazione,
                       with the original's Message-ID (X-Riferimento-Message-ID) and its own
  the legal log        LOGDIR/NODE/*.jsonl: events per Message-ID / PEC id, and each event's key
  state records        one JSON object a line (pec:env:* values, e.g. redis-cli MGET / GET):
                       envelope records per original_msgid
  a Maildir tree       files under new/ and cur/ per Message-ID

As a module (integration/faults_count.py): norm, duplicates, sink_accettazioni, log_events,
state_records, maildir_ids.

As a command (each prints its figures, exits 1 naming what failed):
  count_sinks.py log-once SINK LOGDIR
      every accettazione at the sink has exactly one accettazione record in the log, none is
      recorded twice (integration/e2e-crash.sh (4))
  count_sinks.py none-lost SINK ACCEPTED [--max-duplicates N]
      the distinct accettazioni at the sink (by their own Message-ID) are at least ACCEPTED, the
      same one sent twice at most N times (default 8) (integration/e2e-crash.sh (5))
  count_sinks.py exactly-once SINK LOGDIR ACCEPTED_FILE RECORDS_FILE [--retried N]... [--counts FILE]
      every Message-ID of ACCEPTED_FILE (one a line) has exactly one accettazione at the sink
      and one state record in RECORDS_FILE, none other is at the sink, none twice, each at the
      sink has one log record; the summary also goes to FILE (integration/e2e-sentinel.sh)
"""
import argparse
import collections
import glob
import json
import os
import re
import sys


def norm(mid):
    return (mid or "").strip().strip("<>").strip().lower()


def duplicates(counter):
    """How many are there more than once: the sum of (n - 1) over a Counter."""
    return sum(n - 1 for n in counter.values() if n > 1)


def sink_accettazioni(sink):
    """[(the original's Message-ID, the accettazione's own Message-ID, its file)] of every
    accettazione kept under `sink`; None where the header is missing."""
    out = []
    for f in glob.glob(os.path.join(sink, "**", "*"), recursive=True):
        if not os.path.isfile(f):
            continue
        text = open(f, "rb").read().decode("latin-1")
        if not re.search(r"^X-Ricevuta: accettazione\r?$", text, re.M | re.I):
            continue
        ref = re.search(r"^X-Riferimento-Message-ID: <([^>]+)>", text, re.M | re.I)
        own = re.search(r"^Message-ID: <([^>]+)>", text, re.M | re.I)
        out.append((norm(ref.group(1)) if ref else None, norm(own.group(1)) if own else None, f))
    return out


class LogCounts:
    """The legal log's events about messages (a file's own apertura / chiusura are about none):
    `msgid[event]` and `pec_id[event]` count them per Message-ID of the original and per PEC
    id; `keys` per (pec_id, event, about), which is once per event."""

    def __init__(self):
        self.msgid = collections.defaultdict(collections.Counter)
        self.pec_id = collections.defaultdict(collections.Counter)
        self.keys = collections.Counter()


def log_events(logdir):
    counts = LogCounts()
    for f in glob.glob(os.path.join(logdir, "*", "*.jsonl")):
        for line in open(f, encoding="utf-8", errors="replace"):
            try:
                e = json.loads(line)
            except ValueError:
                continue
            ev = e.get("event")
            if ev is None or not e.get("pec_id"):
                continue
            counts.keys[(e.get("pec_id"), ev, (e.get("about") or "").lower())] += 1
            counts.msgid[ev][norm(e.get("msgid"))] += 1
            counts.pec_id[ev][norm(e.get("pec_id"))] += 1
    return counts


def state_records(path):
    """Envelope records per original_msgid; lines that are not a JSON object (redis-cli's
    empty answers) are skipped. A missing file counts none."""
    by = collections.Counter()
    if not os.path.exists(path):
        return by
    for line in open(path, encoding="utf-8", errors="replace"):
        line = line.strip()
        if line.startswith("{"):
            try:
                by[norm(json.loads(line).get("original_msgid"))] += 1
            except ValueError:
                pass
    return by


def maildir_ids(maildir):
    """Messages stored under a Maildir tree (new/ and cur/) per Message-ID."""
    stored = collections.Counter()
    for root, _dirs, names in os.walk(maildir):
        if os.path.basename(root) not in ("new", "cur"):
            continue
        for n in names:
            head = open(os.path.join(root, n), "rb").read(65536).split(b"\r\n\r\n", 1)[0]
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"message-id:"):
                    stored[norm(line[11:].decode("latin-1"))] += 1
                    break
    return stored


def require(ok, why):
    if not ok:
        raise SystemExit(f"FAIL: {why}")


def refs(sink):
    """The originals' Message-IDs of the accettazioni at the sink, one per accettazione."""
    out = []
    for ref, _own, f in sink_accettazioni(sink):
        require(ref, f"{f}: an accettazione without X-Riferimento-Message-ID")
        out.append(ref)
    return out


def log_once(a):
    sent = refs(a.sink)
    recs = log_events(a.logdir).msgid["accettazione"]
    dup_sent = [k for k, n in collections.Counter(sent).items() if n > 1]
    print(f"accettazioni in the sink: {len(sent)} ({len(set(sent))} distinct, sent twice: {len(dup_sent)}); "
          f"accettazione records: {sum(recs.values())} ({len(recs)} distinct)")
    require(sent, "no accettazione reached the sink")
    missing = [p for p in set(sent) if recs[p] != 1]
    require(not missing, f"{len(missing)} accettazioni without exactly one record, e.g. {missing[:3]}")
    twice = [p for p, n in recs.items() if n > 1]
    require(not twice, f"recorded twice: {twice[:3]}")


def none_lost(a):
    ids = []
    for _ref, own, f in sink_accettazioni(a.sink):
        require(own, f"{f}: an accettazione without Message-ID")
        ids.append(own)
    c = collections.Counter(ids)
    dups = duplicates(c)
    print(f"accepted by the client: {a.accepted}; accettazioni at the sink: {len(ids)}, "
          f"distinct {len(c)}, duplicates {dups}")
    require(len(c) >= a.accepted, f"lost: {a.accepted - len(c)}")
    require(dups <= a.max_duplicates, f"{dups} duplicates")


def exactly_once(a):
    sent = refs(a.sink)
    accepted = [norm(line) for line in open(a.accepted_file) if line.strip()]
    records = state_records(a.records_file)
    logged = log_events(a.logdir).msgid["accettazione"]
    at_sink = collections.Counter(sent)
    dup = [k for k, n in at_sink.items() if n > 1]
    summary = (f"submissions answered 250: {len(accepted)} ({len(set(accepted))} distinct); 4xx sent again: "
               f"{sum(a.retried)}; accettazioni at the sink: {len(sent)} ({len(at_sink)} distinct, "
               f"twice: {len(dup)}); envelope records: {sum(records.values())}; log records: {sum(logged.values())}")
    print(summary)
    if a.counts:
        open(a.counts, "w").write(summary + "\n")
    require(accepted and len(set(accepted)) == len(accepted), "accepted list empty or repeated")
    bad_sink = [x for x in accepted if at_sink[x] != 1]
    require(not bad_sink, f"{len(bad_sink)} accepted without exactly one accettazione, "
            f"e.g. {[(x, at_sink[x]) for x in bad_sink[:3]]}")
    bad_rec = [x for x in accepted if records[x] != 1]
    require(not bad_rec, f"{len(bad_rec)} accepted without exactly one state record, "
            f"e.g. {[(x, records[x]) for x in bad_rec[:3]]}")
    require(not dup, f"accettazioni sent twice: {dup[:3]}")
    extra = set(at_sink) - set(accepted)
    require(not extra, f"accettazioni for submissions never answered 250: {list(extra)[:3]}")
    bad_log = [x for x in at_sink if logged[x] != 1]
    require(not bad_log, f"{len(bad_log)} accettazioni without exactly one log record, e.g. {bad_log[:3]}")


def count(text):
    """A count from a script's field (empty when the field was not found: 0)."""
    return int(text) if text.strip() else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("log-once", help="each accettazione at the sink once in the log")
    p.add_argument("sink")
    p.add_argument("logdir")
    p.set_defaults(run=log_once)
    p = sub.add_parser("none-lost", help="at least ACCEPTED distinct accettazioni, few duplicates")
    p.add_argument("sink")
    p.add_argument("accepted", type=int)
    p.add_argument("--max-duplicates", type=int, default=8)
    p.set_defaults(run=none_lost)
    p = sub.add_parser("exactly-once", help="each accepted submission: one accettazione, one record")
    p.add_argument("sink")
    p.add_argument("logdir")
    p.add_argument("accepted_file")
    p.add_argument("records_file")
    p.add_argument("--retried", type=count, action="append", default=[],
                   help="4xx sent again by a load (repeatable; summed)")
    p.add_argument("--counts", default="", help="also write the summary line here")
    p.set_defaults(run=exactly_once)
    a = ap.parse_args()
    a.run(a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
