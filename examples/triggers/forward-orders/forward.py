"""Maps an ERP order event to the CRM's order format.

Input (stdin): the ERP's JSON event, e.g.
  {"order_id": "A-1001", "customer": {"id": 42, "email": "ada@example.com"},
   "lines": [{"sku": "KB-01", "qty": 2, "unit_price": "49.90"}], "currency": "EUR"}
Result (stdout): {"status": "accepted" | "rejected", "reason": ..., "crm_order": {...}}.
Only accepted results reach the CRM (see the [[outputs]] predicate in function.toml).
Log lines go to stderr; the triggering message's AMQP headers are in WARREN_HEADERS.
"""
import json
import os
import sys
from decimal import Decimal, InvalidOperation


def reject(reason, order_id=None):
    print(f"rejected {order_id}: {reason}", file=sys.stderr)
    json.dump({"status": "rejected", "reason": reason, "order_id": order_id}, sys.stdout)


def main():
    headers = json.loads(os.environ.get("WARREN_HEADERS", "{}"))
    try:
        event = json.load(sys.stdin)
    except json.JSONDecodeError as e:
        return reject(f"not JSON: {e}")
    order_id = event.get("order_id")
    lines = event.get("lines") or []
    if not order_id or not lines:
        return reject("an order needs an order_id and at least one line", order_id)
    try:
        total = sum(Decimal(str(l["unit_price"])) * int(l["qty"]) for l in lines)
    except (KeyError, ValueError, InvalidOperation) as e:
        return reject(f"bad order line: {e}", order_id)
    crm_order = {
        "externalId": order_id,
        "contactId": event.get("customer", {}).get("id"),
        "currency": event.get("currency", "EUR"),
        "amount": str(total),
        "items": [{"product": l["sku"], "quantity": int(l["qty"])} for l in lines],
        "source": headers.get("x-origin", "erp"),
    }
    print(f"order {order_id}: {len(lines)} lines, total {total}", file=sys.stderr)
    json.dump({"status": "accepted", "order_id": order_id, "crm_order": crm_order}, sys.stdout)


main()
