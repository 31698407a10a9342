"""Container HEALTHCHECK: exit 0 when optic answers /readyz, 1 otherwise (no curl in a slim image)."""

from __future__ import annotations

import os
import sys
import urllib.request

# A server bound to every address is reached on loopback; one bound to a single address, there.
host = os.environ.get("HOST", "0.0.0.0")
host = "127.0.0.1" if host in ("", "0.0.0.0", "::") else host
url = f"http://{host}:{os.environ.get('PORT', '3000')}/readyz"
try:
    with urllib.request.urlopen(url, timeout=4) as response:
        sys.exit(0 if response.status == 200 else 1)
except OSError:
    sys.exit(1)
