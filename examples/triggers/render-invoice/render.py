"""Computes one invoice. Input: {"customer": "...", "vat_rate": "0.20", "lines": [{"sku", "qty", "unit_price"}]}.
Result: the invoice with its lines, net, VAT and gross totals (decimal strings)."""
import json
import sys
from decimal import ROUND_HALF_UP, Decimal

CENT = Decimal("0.01")

item = json.load(sys.stdin)
rate = Decimal(str(item.get("vat_rate", "0.20")))
lines = []
for l in item["lines"]:
    net = (Decimal(str(l["unit_price"])) * int(l["qty"])).quantize(CENT, ROUND_HALF_UP)
    lines.append({"sku": l["sku"], "qty": int(l["qty"]), "net": str(net)})
net = sum(Decimal(l["net"]) for l in lines)
vat = (net * rate).quantize(CENT, ROUND_HALF_UP)
print(f"invoice for {item['customer']}: {len(lines)} lines", file=sys.stderr)
json.dump({"customer": item["customer"], "lines": lines, "net": str(net), "vat": str(vat), "gross": str(net + vat)}, sys.stdout)
