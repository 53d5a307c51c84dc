"""`python -m fracscan.cli`: the same app as the `fracscan` script."""

from __future__ import annotations

from fracscan.cli.app import main

if __name__ == "__main__":
    main()
