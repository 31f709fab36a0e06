"""Where a model comes from: a local directory, or a hub id fetched into the HF cache.

`pin_model` runs once in `build_app` (the driver), so a missing or unreachable model fails at
start with one message naming the fix; it pins a hub model to the commit it found. What the
replicas get is that `ModelRef` (hub id and commit, or a local directory the operator declares
present on every node), never a path that exists only on the driver's node: each replica calls
`resolve_model_source` on its own node, in its own HF cache (offline it is a cache lookup).
For a hub id only the files the configured backend needs are downloaded (an ONNX replica never
fetches the safetensors). `read_model_files` reads config.json as JSON: no torch.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from serve_app.core.nli import NLILabelIndices, nli_label_indices
from serve_app.engine.protocol import ModelFiles

RANDOM_WEIGHTS_MARKER = "zsc_random_weights"
# Config and tokenizer files of any architecture (BPE, WordPiece, SentencePiece).
CONFIG_AND_TOKENIZER = ["*.json", "*.txt", "*.model", "merges.txt", "vocab.*"]
# Architectures whose position ids count from the padding index + 1 (transformers'
# `create_position_ids_from_input_ids`): of `max_position_embeddings` rows (514 for RoBERTa and
# XLM-R), the first padding_idx + 1 are never used, so 512 tokens fit, not 514.
POSITIONS_AFTER_PADDING = frozenset(
    {
        "camembert",
        "data2vec-text",
        "esm",
        "ibert",
        "layoutlmv3",
        "lilt",
        "longformer",
        "luke",
        "markuplm",
        "mpnet",
        "roberta",
        "roberta-prelayernorm",
        "xlm-roberta",
        "xlm-roberta-xl",
        "xmod",
    }
)


log = logging.getLogger("ray.serve")


class ModelLoadError(RuntimeError):
    """The model cannot be loaded; the message says how to fix it."""


# huggingface_hub's snapshot folders are named by the commit they hold.
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class ModelRef:
    """What a replica loads: a hub id pinned to a commit, or a local directory (absolute)."""

    model: str
    revision: str | None
    local: bool


def _offline_hint(model: str, revision: str | None, exc: BaseException) -> str:
    first_line = str(exc).splitlines()[0] if str(exc) else ""
    at = f" at revision {revision}" if revision else ""
    return (
        f"Cannot load the model {model!r}{at}: it is not a local directory and the Hugging Face "
        f"hub could not provide it ({type(exc).__name__}: {first_line}). "
        "Fix: pass a local directory that holds the model (make run MODEL=/path/to/model, or "
        "serve run serve_app.app:build_app model=/path/to/model), download it once where the hub "
        f"is reachable (hf download {model}), or run `make demo` for a tiny random test model."
    )


def resolve_model_source(
    model: str, revision: str | None, weights: Sequence[str], required: str = "config.json"
) -> str:
    """The directory `from_pretrained` should load, failing fast with one clear message.

    A local directory is used as is. A hub id is fetched into the Hugging Face cache once (a
    no-op when cached), limited to config, tokenizer and `weights` (allow patterns).
    """
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / required).is_file():
            raise ModelLoadError(f"{path} is a directory but has no {required}: not a model")
        return str(path.resolve())
    if path.is_absolute() or model.startswith((".", "~")):
        raise ModelLoadError(f"Model directory {model!r} does not exist.")
    try:
        from huggingface_hub import snapshot_download

        return str(
            snapshot_download(
                model, revision=revision, allow_patterns=[*CONFIG_AND_TOKENIZER, *weights]
            )
        )
    except Exception as exc:  # network, auth, offline mode, missing repo: all mean "cannot load"
        raise ModelLoadError(_offline_hint(model, revision, exc)) from None


class ReplicaModelError(RuntimeError):
    """A replica cannot load its model on its node. One line: Serve shows the message in
    `serve status`, and the replica logs it."""


def replica_source(
    model: str, revision: str | None, weights: Sequence[str], required: str = "config.json"
) -> str:
    """`resolve_model_source` in a replica, failing with `ReplicaModelError` (one line)."""
    try:
        return resolve_model_source(model, revision, weights, required)
    except ModelLoadError as exc:
        message = f"zsc: {exc}"
        log.error(message)
        raise ReplicaModelError(message) from None


def pin_model(
    model: str, revision: str | None, weights: Sequence[str], required: str = "config.json"
) -> tuple[ModelRef, str]:
    """Check the model once (in the driver) and pin it: the `ModelRef` replicas resolve on their
    own nodes, and the directory it resolved to here (for checks that read its config).

    A hub model is pinned to the commit of the snapshot found (the snapshot folder's name), so
    every replica loads the same weights even if the branch moves; a local directory is bound
    as its absolute path, which must then exist on every node (a shared volume, a baked image).
    """
    source = resolve_model_source(model, revision, weights, required)
    if Path(model).expanduser().is_dir():
        return ModelRef(source, None, local=True), source
    found = Path(source).name
    return ModelRef(model, found if _COMMIT.match(found) else revision, local=False), source


def read_config(source: str) -> dict[str, object]:
    config_file = Path(source) / "config.json"
    try:
        data = json.loads(config_file.read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {config_file}: {exc}") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{config_file} is not a JSON object")
    return data


def usable_positions(config: dict[str, object]) -> int | None:
    """How many tokens the model's position table takes, from config.json (None: no limit)."""
    positions = config.get("max_position_embeddings")
    if not isinstance(positions, int) or isinstance(positions, bool):
        return None
    pad = config.get("pad_token_id")
    if config.get("model_type") in POSITIONS_AFTER_PADDING and isinstance(pad, int):
        return positions - pad - 1
    return positions


def read_model_files(source: str) -> ModelFiles:
    """The label map and usable positions of the model in `source`, from its config.json."""
    config = read_config(source)
    raw = config.get("id2label") or {}
    id2label = {int(k): str(v) for k, v in raw.items()} if isinstance(raw, dict) else {}
    return ModelFiles(
        source=source,
        id2label=id2label,
        max_positions=usable_positions(config),
        random_weights=bool(config.get(RANDOM_WEIGHTS_MARKER, False)),
    )


def read_label_indices(
    source: str, label_map: Mapping[str, int | None] | None = None
) -> NLILabelIndices:
    """Entailment and contradiction in the model's label map (or `label_map`, checked against
    the model's outputs); ModelLabelError if unusable."""
    return nli_label_indices(read_model_files(source).id2label, label_map)
