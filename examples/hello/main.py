import json
import os
import sys

raw = sys.stdin.read()
try:
    data = json.loads(raw) if raw.strip() else {}
except json.JSONDecodeError:
    data = {"name": raw.strip()}
name = data.get("name", "world") if isinstance(data, dict) else str(data)
print(f"greeting {name} (invocation {os.environ.get('WARREN_INVOCATION_ID')})", file=sys.stderr)
json.dump({"greeting": f"Hello, {name}!", "status": "ok"}, sys.stdout)
