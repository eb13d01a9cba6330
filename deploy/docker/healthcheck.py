"""Container health check: exit 0 when ``GET URL`` answers 200 within two seconds, 1 otherwise.

Python's standard library only, so the slim images need no curl. Used by the Dockerfile's HEALTHCHECK
and the compose file: ``python /opt/kadapt/healthcheck.py http://127.0.0.1:8000/readyz``.
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: healthcheck.py URL", file=sys.stderr)
        return 2
    try:
        with urllib.request.urlopen(argv[1], timeout=2.0) as response:
            return 0 if response.status == 200 else 1
    except (urllib.error.URLError, OSError) as error:
        print(f"{argv[1]}: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
