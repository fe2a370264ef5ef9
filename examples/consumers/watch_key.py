#!/usr/bin/env python3
"""A consumer that reads its API key the way apps with `*_FILE` settings do, and picks up a
rotated key without a restart.

keysync replaces the file atomically (a new inode, renamed over the old name), so a cheap
`os.stat` before each use tells whether to re-read; a half-written key is never seen. Copy
`KeyFile` into your app; the `main` below is the demo's consumer (compose service `consumer`
and scripts/demo): it prints the fingerprint of every key it loads.

    GATEWAY_API_KEY_FILE=/keys/gateway.key python3 watch_key.py GATEWAY_API_KEY_FILE
"""

import hashlib
import os
import sys
import time


class KeyFile:
    """The key in `path`, re-read only when the file was replaced or changed."""

    def __init__(self, path):
        self.path = path
        self._stamp = None
        self._key = None

    def get(self):
        """The current key. Call it before each request: it costs one stat()."""
        st = os.stat(self.path)
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            with open(self.path, encoding="utf-8") as f:
                key = f.read().strip()
            if not key:
                raise ValueError(f"{self.path} is empty")
            self._key, self._stamp = key, stamp
        return self._key


def fingerprint(key):
    """keysync's fingerprint (sha256 of the key), as `keysync status` and the audit show it."""
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def main():
    var = sys.argv[1] if len(sys.argv) > 1 else "OPENAI_API_KEY_FILE"
    path = os.environ.get(var)
    if not path:
        sys.exit(f"consumer: set {var} to the key file keysync renders")
    seen_log = os.environ.get("CONSUMER_SEEN_FILE")
    key_file = KeyFile(path)
    last = None
    while True:
        try:
            key = key_file.get()
        except (OSError, ValueError) as e:
            print(f"consumer: waiting for {path}: {e}", flush=True)
            time.sleep(1)
            continue
        if key != last:
            fp = fingerprint(key)
            print(f"consumer: using key {fp[:19]}… from {var}", flush=True)
            if seen_log:
                with open(seen_log, "a", encoding="utf-8") as f:
                    f.write(fp + "\n")
            last = key
        time.sleep(0.2)


if __name__ == "__main__":
    main()
