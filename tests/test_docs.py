"""The docs tell the truth about the code: every code reference in README.md and docs/ names
something that exists (a file, a module or attribute, a config key, a metric), and every figure
that cites a benchmark's results file is the figure in that file."""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from serve_app import __version__
from serve_app.config import AppConfig

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# Folders a bare relative path in the docs may be relative to (`engine/threads.py`).
PATH_BASES = [ROOT, ROOT / "serve_app"]
CODE_SPAN = re.compile(r"`([^`\n]+)`")
FILE_REF = re.compile(r"^(?:[\w.-]+/)+[\w.-]+\.(?:py|ya?ml|json|md|html|sql|txt|toml)$|^[\w.-]+/$")
MODULE_REF = re.compile(r"^serve_app(?:\.\w+)+(?::\w+)?$")
PATH_ATTR_REF = re.compile(r"^((?:[\w-]+/)+[\w-]+\.py):(\w+)$")
CONFIG_REF = re.compile(r"^([a-z_]+)\.([a-z_]+)(?:\.([a-z_]+))?$")
METRIC_REF = re.compile(r"^zsc_[a-z_]+$")
# <!-- figure: bench/results/NAME.json KEY[:KEY...] --> right after the figure it backs.
FIGURE = re.compile(
    r"(?<![\d.,])([0-9][0-9,]*(?:\.[0-9]+)?)[a-zA-Z%]*<!--\s*figure:\s*(\S+)\s+(\S+)\s*-->"
)


def spans() -> list[tuple[str, str]]:
    out = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        # Fenced code blocks are commands and outputs, not references.
        text = re.sub(r"```.*?```", "", text, flags=re.S)
        out.extend((doc.name, span.strip()) for span in CODE_SPAN.findall(text))
    return out


def config_fields(model: type[BaseModel], parts: list[str]) -> bool:
    """True when the dotted key names a field of the config model (through nested sections)."""
    current: Any = model
    for part in parts:
        fields = getattr(current, "model_fields", None)
        if fields is None or part not in fields:
            return False
        annotation = fields[part].annotation
        current = next(
            (
                a
                for a in getattr(annotation, "__args__", (annotation,))
                if hasattr(a, "model_fields")
            ),
            annotation,
        )
    return True


def metric_names() -> set[str]:
    source = (ROOT / "serve_app" / "observability" / "metrics.py").read_text()
    return set(re.findall(r'"(zsc_[a-z_]+)"', source))


def test_every_file_module_and_attribute_the_docs_name_exists() -> None:
    missing = []
    metrics = metric_names()
    for doc, ref in spans():
        if FILE_REF.match(ref) and not ref.startswith(("http", "bench/results/")):
            if not any((base / ref).exists() for base in PATH_BASES):
                missing.append((doc, ref))
        elif match := PATH_ATTR_REF.match(ref):
            path = next((b / match[1] for b in PATH_BASES if (b / match[1]).is_file()), None)
            if path is None or not re.search(
                rf"\b(def|class)\s+{match[2]}\b|^{match[2]}\s*=", path.read_text(), re.M
            ):
                missing.append((doc, ref))
        elif MODULE_REF.match(ref):
            module, _, attr = ref.partition(":")
            if not resolves(module, attr):
                missing.append((doc, ref))
        elif METRIC_REF.match(ref) and ref not in metrics:
            missing.append((doc, ref))
    assert not missing, f"the docs name things that do not exist: {missing}"


def resolves(dotted: str, attr: str) -> bool:
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in [*parts[cut:], *([attr] if attr else [])]:
            if not hasattr(obj, name):
                return False
            obj = getattr(obj, name)
        return True
    return False


def test_every_config_key_the_docs_name_exists() -> None:
    sections = {
        name
        for name, field in AppConfig.model_fields.items()
        if any(
            hasattr(a, "model_fields")
            for a in getattr(field.annotation, "__args__", (field.annotation,))
        )
    }
    missing = []
    for doc, ref in spans():
        match = CONFIG_REF.match(ref)
        if match and match[1] in sections:
            parts = [p for p in match.groups() if p]
            if not config_fields(AppConfig, parts):
                missing.append((doc, ref))
    assert not missing, f"the docs name config keys that do not exist: {missing}"


def figures() -> list[tuple[str, str, str, str]]:
    found = []
    for doc in DOCS:
        for number, path, key in FIGURE.findall(doc.read_text(encoding="utf-8")):
            found.append((doc.name, number, path, key))
    return found


def test_the_docs_cite_figures_from_results_files() -> None:
    # The benchmarks' figures are quoted from their results files; this guards that the
    # citation mechanism is in use, so the check below is not vacuous.
    assert len(figures()) >= 5


@pytest.mark.parametrize(("doc", "number", "path", "key"), figures())
def test_each_quoted_figure_is_the_one_in_its_results_file(
    doc: str, number: str, path: str, key: str
) -> None:
    data: Any = json.loads((ROOT / path).read_text())
    for part in key.split(":"):
        data = data[int(part)] if isinstance(data, list) else data[part]
    quoted = float(number.replace(",", ""))
    decimals = len(number.partition(".")[2])
    # The quote is the file's value rounded to the digits shown.
    assert abs(float(data) - quoted) <= 0.5 * 10**-decimals + 1e-9, (
        f"{doc} quotes {number} for {path} {key}, the file says {data}"
    )


def test_image_tags_in_the_docs_and_k8s_are_the_package_version() -> None:
    files = [*DOCS, *sorted((ROOT / "k8s").iterdir())]
    tags = {
        (path.name, tag)
        for path in files
        if path.is_file()
        for tag in re.findall(r"\bzsc:(\d+\.\d+\.\d+)", path.read_text(encoding="utf-8"))
    }
    assert tags, "no zsc:X.Y.Z image tag found: the check below would be vacuous"
    stale = {(name, tag) for name, tag in tags if tag != __version__}
    assert not stale, f"image tags that are not the package version {__version__}: {stale}"


# A rate or a ratio (3.4x, 1,200 pairs/s, 18,000 ... a second) is a measurement; in README.md
# each one cites its results file (FIGURE above). Multiplications ("1 x 8") have a space.
MEASURED = re.compile(
    r"(?<![\w.,])\d[\d,]*(?:\.\d+)?"
    r"(?:x\b|\s?(?:\w+)?/s\b|\s(?:\w+\s)?(?:a|per) second\b)"
    r"(?!\s*<!--\s*figure)"
)


def test_every_rate_or_ratio_in_the_readme_cites_its_results_file() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    text = re.sub(r"```.*?```", "", text, flags=re.S)  # commands and outputs
    text = CODE_SPAN.sub("``", text)  # names and values, not figures
    uncited = [" ".join(m.group(0).split()) for m in MEASURED.finditer(text)]
    assert not uncited, f"README.md quotes figures no results file backs: {uncited}"
