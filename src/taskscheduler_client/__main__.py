"""``python -m taskscheduler_client``: the same as ``tsched``."""

from __future__ import annotations

from .cli import main

if __name__ == "__main__":
    main()
