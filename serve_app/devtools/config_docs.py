"""Render the configuration reference (the README's table) from `AppConfig` itself.

The README embeds this table between markers, and a test regenerates it, so the documented
knobs, defaults and descriptions can never drift from the code.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from serve_app.config import AppConfig

BEGIN = "<!-- config-table:begin -->"
END = "<!-- config-table:end -->"


def _default(value: Any) -> str:
    if isinstance(value, BaseModel):
        return ""
    text = json.dumps(value, default=str)
    return f"`{text}`"


def _rows(model: type[BaseModel], instance: BaseModel, prefix: str) -> list[tuple[str, str, str]]:
    rows: list[tuple[str, str, str]] = []
    for name, field in model.model_fields.items():
        value = getattr(instance, name)
        key = f"{prefix}{name}"
        if isinstance(value, BaseModel):
            rows.extend(_rows(type(value), value, f"{key}."))
            continue
        description = (field.description or "").replace("|", "\\|").replace("\n", " ")
        rows.append((key, _default(value), description))
    return rows


def config_table() -> str:
    lines = ["| key | default | meaning |", "| --- | --- | --- |"]
    lines += [f"| `{k}` | {d} | {m} |" for k, d, m in _rows(AppConfig, AppConfig(), "")]
    return "\n".join(lines)


def embed(readme: str) -> str:
    """Return the README text with the table between the markers replaced by a fresh one."""
    head, _, rest = readme.partition(BEGIN)
    _, _, tail = rest.partition(END)
    return f"{head}{BEGIN}\n{config_table()}\n{END}{tail}"


def main(argv: list[str]) -> None:
    """`python -m serve_app.devtools.config_docs [--write README.md]`: print the table, or embed
    it in the file between the markers."""
    if argv[:1] == ["--write"] and len(argv) == 2:
        path = Path(argv[1])
        path.write_text(embed(path.read_text()))
    else:
        print(config_table())


if __name__ == "__main__":
    main(sys.argv[1:])
