"""Where ``tsched`` keeps its files inside a data directory.

A module of its own so that the CLI can name these paths without importing the services (and
trio with them): every ``tsched`` command pays for what it imports at start.
"""

from __future__ import annotations

#: The server's SQLite file, inside the data directory.
SERVER_DATABASE_NAME = "server.sqlite3"
