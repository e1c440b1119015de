"""A small table: a list of row dicts that prints as aligned columns (evaluations, sweeps)."""

from __future__ import annotations

import html
import math
from typing import Any


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.4g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"
    return str(value)


class Table(list[dict[str, Any]]):
    """Rows of one kind (dicts with the same keys), printed as aligned text, or HTML in Jupyter.

    It is a list: index it, iterate it, or hand it to ``pandas.DataFrame(table)``.

    Examples
    --------
    >>> Table([{"class": 1, "recall": 0.5}, {"class": 2, "recall": float("nan")}])
    class  recall
        1     0.5
        2       -
    """

    def columns(self) -> list[str]:
        """The column names, from the first row."""
        return list(self[0]) if self else []

    def __repr__(self) -> str:
        if not self:
            return "(no rows)"
        cols = self.columns()
        cells = [[_cell(row.get(c, "")) for c in cols] for row in self]
        widths = [max(len(c), *(len(r[k]) for r in cells)) for k, c in enumerate(cols)]
        lines = ["  ".join(c.rjust(w) for c, w in zip(cols, widths))]
        lines += ["  ".join(v.rjust(w) for v, w in zip(r, widths)) for r in cells]
        return "\n".join(line.rstrip() for line in lines)

    def _repr_html_(self) -> str:
        cols = self.columns()
        head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(_cell(row.get(c, '')))}</td>" for c in cols) + "</tr>" for row in self
        )
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


__all__ = ["Table"]
