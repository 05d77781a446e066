"""Fan-in of a render-invoice batch. Input: {"batch", "total", "counts", "results": [{"id", "status", "result", "error"}]}
(or "results_url" instead of "results" when they were too large to inline: page through it with the API)."""
import json
import sys
from decimal import Decimal

batch = json.load(sys.stdin)
if "results" not in batch:
    print(f"results too large to inline; read {batch['results_url']}", file=sys.stderr)
    json.dump({"batch": batch["batch"], "counts": batch["counts"]}, sys.stdout)
    sys.exit(0)
ok = [r for r in batch["results"] if r["status"] == "succeeded"]
failed = [{"id": r["id"], "status": r["status"], "error": r["error"]} for r in batch["results"] if r["status"] != "succeeded"]
gross = sum(Decimal(r["result"]["gross"]) for r in ok)
print(f"batch {batch['batch']}: {len(ok)} invoices, {len(failed)} failed, gross {gross}", file=sys.stderr)
json.dump({"batch": batch["batch"], "invoices": len(ok), "gross": str(gross), "failed": failed}, sys.stdout)
