"""A webhook receiver for the tests, written apart from pixpool on purpose: it checks
every request against the Standard Webhooks scheme with Python's own hmac and
hashlib, and records what it got.

    receiver.py DIR SECRET

Writes DIR/port once listening. Each POST is answered with the first status listed
in DIR/plan (comma-separated; the last one stays once the others are used up, and a
missing plan means 200), and appended to DIR/log.jsonl as one JSON object:
{"path", "id", "timestamp", "signature_ok", "fresh", "status", "body"}.
"""

import base64
import hashlib
import hmac
import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DIR, SECRET = sys.argv[1], sys.argv[2]
KEY = base64.b64decode(SECRET.removeprefix("whsec_"))


def next_status():
    path = os.path.join(DIR, "plan")
    try:
        with open(path) as f:
            plan = [int(s) for s in f.read().split(",") if s.strip()]
    except FileNotFoundError:
        return 200
    if not plan:
        return 200
    if len(plan) > 1:
        with open(path + ".tmp", "w") as f:
            f.write(",".join(str(s) for s in plan[1:]))
        os.replace(path + ".tmp", path)
    return plan[0]


def verify(msg_id, timestamp, body, header):
    signed = msg_id.encode() + b"." + timestamp.encode() + b"." + body
    expected = base64.b64encode(hmac.new(KEY, signed, hashlib.sha256).digest()).decode()
    # The header may carry several space-separated signatures; any v1 one may match.
    for candidate in header.split(" "):
        version, _, sig = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(sig, expected):
            return True
    return False


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        length = int(self.headers.get("content-length", "0"))
        body = self.rfile.read(length)
        msg_id = self.headers.get("webhook-id", "")
        timestamp = self.headers.get("webhook-timestamp", "")
        signature = self.headers.get("webhook-signature", "")
        ok = bool(msg_id and timestamp) and verify(msg_id, timestamp, body, signature)
        fresh = timestamp.isdigit() and abs(time.time() - int(timestamp)) < 300
        status = next_status()
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = None
        record = {
            "path": self.path,
            "id": msg_id,
            "timestamp": timestamp,
            "signature_ok": ok,
            "fresh": fresh,
            "content_type": self.headers.get("content-type", ""),
            "status": status,
            "body": parsed,
        }
        with open(os.path.join(DIR, "log.jsonl"), "a") as f:
            f.write(json.dumps(record) + "\n")
        self.send_response(status)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
with open(os.path.join(DIR, "port.tmp"), "w") as f:
    f.write(str(server.server_address[1]))
os.replace(os.path.join(DIR, "port.tmp"), os.path.join(DIR, "port"))
server.serve_forever()
