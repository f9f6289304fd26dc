"""Tables the commands print (fixed width) and write (Markdown), from one header and rows of strings."""

from __future__ import annotations

from collections.abc import Sequence

from ..partition.plan import bucket_name

__all__ = ["bucket_name", "markdown_table", "text_table"]


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """'1 layer', '3 layers' ('1 2-D tensor', ...)."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def _is_number(cell: str) -> bool:
    return cell[:1].isdigit() or (cell[:1] in ("-", "+", ".") and cell[1:2].isdigit())


def text_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell; numeric columns (judged by the first row) right-aligned."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    right = [bool(rows) and _is_number(str(rows[0][i])) for i in range(len(header))]

    def fmt(row):
        return "  ".join(str(c).rjust(w) if r else str(c).ljust(w) for c, w, r in zip(row, widths, right)).rstrip()

    return "\n".join([fmt(header), "  ".join("-" * w for w in widths), *map(fmt, rows)])


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]], code_first: bool = True) -> str:
    """A GitHub Markdown table; the first column (layer names) in code font when ``code_first``."""
    right = [bool(rows) and _is_number(str(rows[0][i])) for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if r else "---" for r in right) + "|"]
    for row in rows:
        cells = [f"`{c}`" if i == 0 and code_first else str(c) for i, c in enumerate(row)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
