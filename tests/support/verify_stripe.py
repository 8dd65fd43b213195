"""Verifies forwarded webhooks with Stripe's own library, for tests/forward.rs.

One JSON object a line on stdin: {"body": <hex of the raw body>, "sig": <Stripe-Signature>,
"secret": <whsec_...>}; one JSON answer a line on stdout: {"ok": true, "id": ..., "type": ...} or
{"ok": false, "error": ...}. stripe.Webhook.construct_event does exactly what a shop's handler
does: it checks the v1 signature over the raw bytes, the timestamp tolerance (300 s), and parses
the event.
"""

import json
import sys

import stripe

print(json.dumps({"ready": True, "stripe": stripe.VERSION}), flush=True)
for line in sys.stdin:
    request = json.loads(line)
    try:
        event = stripe.Webhook.construct_event(
            bytes.fromhex(request["body"]), request["sig"], request["secret"]
        )
        answer = {"ok": True, "id": event["id"], "type": event["type"]}
    except Exception as e:  # every failure is an answer, never a crash
        answer = {"ok": False, "error": f"{type(e).__name__}: {e}"}
    print(json.dumps(answer), flush=True)
