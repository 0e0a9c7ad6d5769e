"""What a benchmark hands back: its figures for the JSON file and a table for people."""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

#: How big a run: ``tiny`` for the smoke test, ``quick`` for seconds, ``full`` for the figures.
Size = Literal["tiny", "quick", "full"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Result:
    title: str
    columns: list[str]
    rows: list[list[str]]
    #: JSON-serialisable; every leaf a number (or a short string naming a case).
    figures: dict[str, Any]

    def table(self) -> str:
        """The rows under the columns, each column as wide as its widest cell."""
        cells = [self.columns, *self.rows]
        widths = [max(len(row[index]) for row in cells) for index in range(len(self.columns))]

        def line(row: list[str]) -> str:
            # The first column names a case: left-aligned; figures: right-aligned.
            first, *rest = row
            return "  ".join(
                [
                    first.ljust(widths[0]),
                    *(c.rjust(w) for c, w in zip(rest, widths[1:], strict=True)),
                ]
            ).rstrip()

        rule = "  ".join("-" * width for width in widths)
        return "\n".join([self.title, line(self.columns), rule, *(line(row) for row in self.rows)])
