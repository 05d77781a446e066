import sys

print("about to fail on purpose", file=sys.stderr)
print("reason: this example shows how failures are recorded", file=sys.stderr)
sys.exit(3)
