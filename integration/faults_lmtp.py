#!/usr/bin/env python3
"""integration/faults_lmtp.py: the delivery point's load of integration/faults.sh.

Delivers the message files of --dir (name order, each once) over LMTP to 127.0.0.1:--port,
one connection per message, --concurrency at a time, paced at --rate messages/s, retrying as
Postfix's lmtp client would: a 4xx reply or a failed connection sends the same bytes again
after --pause seconds, up to --retries tries. Writes --record (one line per message,
tab-separated: index, Message-ID, final status accept|tempfail|reject|error, tries) and prints
one line: sent= accept= tempfail= reject= errors= retried= elapsed_s=.
"""
import argparse
import glob
import os
import re
import smtplib
import threading
import time


def msgid_of(data):
    head = data.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    m = re.search(rb"^Message-ID:\s*(<[^>\r\n]*>)", head, re.I | re.M)
    return m.group(1).decode("latin-1") if m else "-"


def one(port, mail_from, rcpt, data, timeout):
    """('accept'|'tempfail'|'reject'|'error', detail) of one LMTP transaction."""
    try:
        c = smtplib.LMTP("127.0.0.1", port, timeout=timeout)
    except OSError as e:
        return "error", str(e)
    try:
        refused = c.sendmail(mail_from, [rcpt], data)
        if refused:
            code = list(refused.values())[0][0]
            return ("tempfail" if 400 <= code < 500 else "reject"), str(refused)
        return "accept", ""
    except smtplib.SMTPRecipientsRefused as e:
        code = list(e.recipients.values())[0][0]
        return ("tempfail" if 400 <= code < 500 else "reject"), str(e.recipients)
    except (smtplib.SMTPDataError, smtplib.SMTPSenderRefused, smtplib.SMTPResponseException) as e:
        return ("tempfail" if 400 <= e.smtp_code < 500 else "reject"), str(e)
    except (OSError, smtplib.SMTPException) as e:
        return "error", str(e)
    finally:
        try:
            c.quit()
        except Exception:
            try:
                c.close()
            except Exception:
                pass


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--from", dest="mail_from", required=True)
    ap.add_argument("--to", required=True)
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--rate", type=float, default=0)
    ap.add_argument("--retries", type=int, default=400)
    ap.add_argument("--pause", type=float, default=0.25)
    ap.add_argument("--timeout", type=float, default=20)
    ap.add_argument("--record", required=True)
    a = ap.parse_args()
    files = sorted(glob.glob(os.path.join(a.dir, "*.eml")))
    lock = threading.Lock()
    nxt = [0]
    results = [None] * len(files)
    retried = [0]
    start = time.monotonic()

    def worker():
        while True:
            with lock:
                i = nxt[0]
                nxt[0] += 1
            if i >= len(files):
                return
            if a.rate > 0:
                due = start + i / a.rate
                d = due - time.monotonic()
                if d > 0:
                    time.sleep(d)
            data = open(files[i], "rb").read()
            tries = 0
            while True:
                tries += 1
                st, _ = one(a.port, a.mail_from, a.to, data, a.timeout)
                if st in ("accept", "reject") or tries >= a.retries:
                    break
                time.sleep(a.pause)
            with lock:
                retried[0] += tries - 1
            results[i] = (i, msgid_of(data), st, tries)

    threads = [threading.Thread(target=worker) for _ in range(max(1, a.concurrency))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with open(a.record, "w") as f:
        for r in results:
            if r:
                f.write("%d\t%s\t%s\t%d\n" % r)
    n = {k: sum(1 for r in results if r and r[2] == k) for k in ("accept", "tempfail", "reject", "error")}
    print("sent=%d accept=%d tempfail=%d reject=%d errors=%d retried=%d elapsed_s=%.3f" % (
        len(files), n["accept"], n["tempfail"], n["reject"], n["error"], retried[0],
        time.monotonic() - start))
    return 0 if n["accept"] == len(files) else 1


if __name__ == "__main__":
    raise SystemExit(main())
