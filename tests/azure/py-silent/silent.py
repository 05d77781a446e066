"""A custom handler that starts but never opens its port: the host must give up on it."""
import sys
import time

print("starting but never listening", file=sys.stderr, flush=True)
while True:
    time.sleep(3600)
