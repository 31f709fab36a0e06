"""What the test suite checks, at one or more git revisions: `assert` statements,
`pytest.raises` calls and `test_*` functions under tests/, counted with `ast` (issue 23 asks
that a faster suite assert no less). `python -m bench.suite_census REV [REV ...]`."""

from __future__ import annotations

import ast
import subprocess
import sys


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout


def census(rev: str) -> dict[str, int]:
    counts = {"asserts": 0, "raises": 0, "tests": 0}
    for path in _git("ls-tree", "-r", "--name-only", rev, "tests").split():
        if not path.endswith(".py"):
            continue
        for node in ast.walk(ast.parse(_git("show", f"{rev}:{path}"))):
            if isinstance(node, ast.Assert):
                counts["asserts"] += 1
            elif isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "raises":
                counts["raises"] += 1
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                counts["tests"] += node.name.startswith("test_")
    return counts


def main(revs: list[str]) -> None:
    for rev in revs or ["HEAD"]:
        c = census(rev)
        print(f"{rev}: {c['asserts']} asserts, {c['raises']} pytest.raises, {c['tests']} tests")


if __name__ == "__main__":
    main(sys.argv[1:])
