"""The NLI cross-encoder: load it, turn (text, label) pairs into tokens, run batched forwards.

No Ray here: the Classifier deployment wraps one `NLIModel`, and benchmarks and tests drive it
directly. Loading always goes through `from_pretrained`, from a hub id or a local directory.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from serve_app.config import ModelConfig
from serve_app.errors import ClientError
from serve_app.nli import NLILabelIndices, nli_label_indices

log = logging.getLogger(__name__)

# A pair after tokenization: input ids, and token type ids for models that use them (BERT).
# Tuples, so identical pairs hash equal and are computed once per batch.
Pair = tuple[tuple[int, ...], tuple[int, ...] | None]

RANDOM_WEIGHTS_MARKER = "zsc_random_weights"
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class ModelLoadError(RuntimeError):
    """The model cannot be loaded; the message says how to fix it."""


def pair_tokens(pair: Pair) -> int:
    return len(pair[0])


def batch_tokens(pairs: Sequence[Pair]) -> int:
    """`batch_size_fn` for `@serve.batch`: a batch's size is its number of tokens."""
    return sum(len(p[0]) for p in pairs)


@dataclass(frozen=True)
class EncodedRequest:
    pairs: list[Pair]  # text-major: text 0 x every label, then text 1, ...
    truncated: list[int]  # indices of texts cut to fit the window


def _offline_hint(model: str, exc: BaseException) -> str:
    return (
        f"Cannot load the model {model!r}: it is not a local directory and the Hugging Face hub "
        f"could not provide it ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). "
        "Fix: pass a local directory that holds the model (make run MODEL=/path/to/model, or "
        "serve run serve_app.app:build_app model=/path/to/model), download it once where the hub "
        f"is reachable (hf download {model}), or run `make demo` for a tiny random test model."
    )


def resolve_model_source(cfg: ModelConfig) -> str:
    """Return what `from_pretrained` should load, failing fast with one clear message.

    A local directory is used as is. A hub id is fetched into the Hugging Face cache once
    (a no-op when cached); when the hub is unreachable this raises ModelLoadError naming the fix.
    """
    path = Path(cfg.model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{path} is a directory but has no config.json: not a model")
        return str(path.resolve())
    if path.is_absolute() or cfg.model.startswith((".", "~")):
        raise ModelLoadError(f"Model directory {cfg.model!r} does not exist.")
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(
            cfg.model,
            revision=cfg.revision,
            allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "merges.txt", "vocab.*"],
        )
    except Exception as exc:  # network, auth, offline mode, missing repo: all mean "cannot load"
        raise ModelLoadError(_offline_hint(cfg.model, exc)) from None


def read_label_indices(source: str, revision: str | None = None) -> NLILabelIndices:
    config = AutoConfig.from_pretrained(source, revision=revision)
    return nli_label_indices(config.id2label)


def is_random_test_model(source: str) -> bool:
    config_file = Path(source) / "config.json"
    if not config_file.is_file():
        return False
    return bool(json.loads(config_file.read_text()).get(RANDOM_WEIGHTS_MARKER, False))


def pick_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("device=cuda was asked for but no GPU is visible to this replica")
    return torch.device(requested)


def pick_dtype(requested: str, device: torch.device) -> torch.dtype:
    if requested == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return _DTYPES[requested]


class NLIModel:
    """One loaded NLI cross-encoder with its tokenizer, ready for batched forwards."""

    def __init__(self, cfg: ModelConfig, source: str | None = None):
        self.cfg = cfg
        self.name = cfg.model
        self.source = source or resolve_model_source(cfg)
        self.device = pick_device(cfg.device)
        self.dtype = pick_dtype(cfg.dtype, self.device)
        if cfg.torch_threads:
            torch.set_num_threads(cfg.torch_threads)
        self.tokenizer = AutoTokenizer.from_pretrained(self.source, revision=cfg.revision)
        model = AutoModelForSequenceClassification.from_pretrained(
            self.source, revision=cfg.revision, dtype=self.dtype
        )
        self.indices = nli_label_indices(model.config.id2label)
        self.id2label = {int(k): v for k, v in model.config.id2label.items()}
        model.eval()
        if cfg.backend == "int8":
            if self.device.type != "cpu":
                raise ModelLoadError("backend=int8 runs on CPU only")
            model = torch.ao.quantization.quantize_dynamic(
                model, {torch.nn.Linear}, dtype=torch.qint8
            )
        self.model = model.to(self.device)
        self.window = cfg.max_length or self._default_window(model)
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = self.tokenizer.eos_token_id or 0
        self.uses_token_types = "token_type_ids" in self.tokenizer.model_input_names
        self.random_weights = is_random_test_model(self.source)

    def _default_window(self, model: torch.nn.Module) -> int:
        window = int(self.tokenizer.model_max_length)
        # Tokenizers without a saved limit report a huge sentinel; fall back to the positions.
        max_positions = getattr(model.config, "max_position_embeddings", None)
        if window > 100_000 and max_positions:
            window = int(max_positions)
        return window

    def describe(self) -> dict[str, object]:
        return {
            "model": self.name,
            "source": self.source,
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "backend": self.cfg.backend,
            "max_length": self.window,
            "id2label": self.id2label,
            "entailment_index": self.indices.entailment,
            "contradiction_index": self.indices.contradiction,
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "random_weights": self.random_weights,
            "torch_threads": torch.get_num_threads(),
        }

    # -- tokenization -------------------------------------------------------------------------

    def encode(self, texts: Sequence[str], labels: Sequence[str], template: str) -> EncodedRequest:
        """Tokenize every (text, hypothesis) pair as the pipeline does: only the premise is cut."""
        hyps = [template.format(label) for label in labels]
        premises = [t for t in texts for _ in hyps]
        hyp_list = hyps * len(texts)
        try:
            encoded = self.tokenizer(
                premises,
                hyp_list,
                truncation="only_first",
                max_length=self.window,
                return_attention_mask=False,
            )
        except Exception as exc:  # the tokenizer refuses when a hypothesis alone overflows
            raise ClientError(
                f"a hypothesis does not fit the model's window of {self.window} tokens "
                f"({exc}); use shorter labels or a shorter hypothesis_template"
            ) from None
        ids = encoded["input_ids"]
        types = encoded.get("token_type_ids") if self.uses_token_types else None
        pairs: list[Pair] = [
            (tuple(ids[i]), tuple(types[i]) if types is not None else None) for i in range(len(ids))
        ]
        return EncodedRequest(pairs=pairs, truncated=self._truncated(texts, hyps))

    def _truncated(self, texts: Sequence[str], hyps: Sequence[str]) -> list[int]:
        longest_hyp = max(
            len(ids) for ids in self.tokenizer(list(hyps), add_special_tokens=False)["input_ids"]
        )
        budget = self.window - longest_hyp - self.tokenizer.num_special_tokens_to_add(pair=True)
        lengths = [len(ids) for ids in self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]]
        return [i for i, n in enumerate(lengths) if n > budget]

    # -- forward ------------------------------------------------------------------------------

    @torch.inference_mode()
    def forward(self, pairs: Sequence[Pair], max_batch_tokens: int = 4096) -> np.ndarray:
        """Logits (len(pairs), n_classes) in input order.

        Identical pairs are computed once; the rest run in length-sorted sub-batches whose padded
        size (longest x count) stays within max_batch_tokens, so short pairs never pay for long.
        """
        if not pairs:
            return np.zeros((0, len(self.id2label)), dtype=np.float32)
        unique: dict[Pair, int] = {}
        for pair in pairs:
            unique.setdefault(pair, len(unique))
        distinct = list(unique)
        order = sorted(range(len(distinct)), key=lambda i: pair_tokens(distinct[i]))
        out = np.empty((len(distinct), len(self.id2label)), dtype=np.float32)
        for chunk in _length_buckets(order, distinct, max_batch_tokens):
            out[chunk] = self._forward_padded([distinct[i] for i in chunk])
        return out[[unique[p] for p in pairs]]

    def _forward_padded(self, pairs: Sequence[Pair]) -> np.ndarray:
        longest = max(pair_tokens(p) for p in pairs)
        ids = torch.full((len(pairs), longest), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(pairs), longest), dtype=torch.long)
        types = torch.zeros((len(pairs), longest), dtype=torch.long) if self.uses_token_types else None
        for row, (pair_ids, pair_types) in enumerate(pairs):
            n = len(pair_ids)
            ids[row, :n] = torch.tensor(pair_ids)
            mask[row, :n] = 1
            if types is not None and pair_types is not None:
                types[row, :n] = torch.tensor(pair_types)
        inputs = {"input_ids": ids.to(self.device), "attention_mask": mask.to(self.device)}
        if types is not None:
            inputs["token_type_ids"] = types.to(self.device)
        return self.model(**inputs).logits.float().cpu().numpy()


def _length_buckets(order: list[int], pairs: list[Pair], max_batch_tokens: int) -> list[list[int]]:
    """Cut length-sorted indices into runs whose padded size fits the token budget."""
    buckets: list[list[int]] = []
    current: list[int] = []
    for i in order:
        longest = pair_tokens(pairs[i])  # sorted ascending, so the newest is the longest
        if current and longest * (len(current) + 1) > max_batch_tokens:
            buckets.append(current)
            current = []
        current.append(i)
    if current:
        buckets.append(current)
    return buckets


def configure_threads_from_env() -> None:
    """Respect OMP_NUM_THREADS (Ray sets it from num_cpus) when torch_threads is not given."""
    threads = os.environ.get("OMP_NUM_THREADS")
    if threads and threads.isdigit() and int(threads) > 0:
        torch.set_num_threads(int(threads))
