"""The NLI cross-encoder: load it, turn (text, label) pairs into tokens, run batched forwards.

No Ray here: the Classifier deployment wraps one `NLIModel`, and benchmarks and tests drive it
directly. Loading always goes through `from_pretrained`, from a hub id or a local directory.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import threading
from collections import OrderedDict, deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from serve_app.config import ModelConfig
from serve_app.errors import ClientError
from serve_app.nli import NLILabelIndices, hypotheses, nli_label_indices

log = logging.getLogger(__name__)

# A pair after tokenization: input ids, and token type ids for models that use them (BERT).
# Tuples, so identical pairs hash equal and are computed once per batch.
Pair = tuple[tuple[int, ...], tuple[int, ...] | None]

RANDOM_WEIGHTS_MARKER = "zsc_random_weights"
CPU_FORWARD_TOKENS = 512
GPU_FORWARD_TOKENS = 16384
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class ModelLoadError(RuntimeError):
    """The model cannot be loaded; the message says how to fix it."""


def pair_tokens(pair: Pair) -> int:
    return len(pair[0])


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
        self.threads, self.workers = thread_plan(
            cfg.torch_threads, cfg.forward_workers, self.device, replica_cpus()
        )
        torch.set_num_threads(self.threads)
        # Measured here on batches of ~30 mixed-length pairs (as the service forms them):
        # 512-token sub-batches ran 13% faster than 1024 and 60% faster than 4096 on fp32 (int8
        # alike): on CPU a sub-batch of a few pairs already fills the matrix units, and smaller
        # ones span fewer lengths, so pad less. A GPU wants the whole batch in one forward.
        self.forward_tokens = cfg.forward_tokens or (
            CPU_FORWARD_TOKENS if self.device.type == "cpu" else GPU_FORWARD_TOKENS
        )
        # The calling thread runs sub-batches too, so workers - 1 more threads.
        self._pool = (
            ThreadPoolExecutor(self.workers - 1, thread_name_prefix="zsc-forward")
            if self.workers > 1
            else None
        )
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
        # Fast tokenizers (every current NLI model has one) assemble pairs from parts tokenized
        # once; a slow tokenizer falls back to tokenizing each pair as the pipeline does.
        self.pair_tokenizer = (
            PairTokenizer(self.tokenizer, self.window, self.uses_token_types)
            if getattr(self.tokenizer, "is_fast", False)
            else None
        )

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
            "forward_workers": self.workers,
            "forward_tokens": self.forward_tokens,
        }

    # -- tokenization -------------------------------------------------------------------------

    def encode(self, texts: Sequence[str], labels: Sequence[str], template: str) -> EncodedRequest:
        """Tokenize every (text, hypothesis) pair as the pipeline does: only the premise is cut.

        Each distinct text is tokenized once and each hypothesis once (and kept in a bounded
        cache across requests); pairs are assembled from those parts by the tokenizer's own
        post-processor, which gives exactly the pipeline's ids (tests/test_parity.py proves it).
        """
        hyps = hypotheses(labels, template)
        if self.pair_tokenizer is not None:
            return self.pair_tokenizer.encode(texts, hyps)
        return self.encode_each_pair(texts, hyps)

    def encode_each_pair(self, texts: Sequence[str], hyps: Sequence[str]) -> EncodedRequest:
        """The pipeline's own way: the tokenizer called on every (premise, hypothesis) pair."""
        premises = [t for t in texts for _ in hyps]
        hyp_list = list(hyps) * len(texts)
        try:
            encoded = self.tokenizer(
                premises,
                hyp_list,
                truncation="only_first",
                max_length=self.window,
                return_attention_mask=False,
            )
        except Exception as exc:  # the tokenizer refuses when a hypothesis alone overflows
            raise ClientError(_hypothesis_too_long(self.window, exc)) from None
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

    def forward(self, pairs: Sequence[Pair], max_batch_tokens: int | None = None) -> np.ndarray:
        """Logits (len(pairs), n_classes) in input order.

        Identical pairs are computed once; the rest run in length-sorted sub-batches whose padded
        size (longest x count) stays within max_batch_tokens (default: the model's
        forward_tokens), so short pairs never pay for long. With forward_workers > 1 the sorted
        pairs are re-cut into runs of equal tokens, a multiple of the workers (`_balanced`; a
        run may then exceed the budget), and run on that many threads at once, costliest first
        (see `thread_plan`).
        """
        if not pairs:
            return np.zeros((0, len(self.id2label)), dtype=np.float32)
        unique: dict[Pair, int] = {}
        for pair in pairs:
            unique.setdefault(pair, len(unique))
        distinct = list(unique)
        order = sorted(range(len(distinct)), key=lambda i: pair_tokens(distinct[i]))
        out = np.empty((len(distinct), len(self.id2label)), dtype=np.float32)
        budget = self.forward_tokens if max_batch_tokens is None else max_batch_tokens
        chunks = _length_buckets(order, distinct, budget)
        if self._pool is None or len(distinct) == 1:
            with torch.inference_mode():
                for chunk in chunks:
                    out[chunk] = self._forward_padded([distinct[i] for i in chunk])
        else:
            self._forward_parallel(_balanced(order, distinct, len(chunks), self.workers), distinct, out)
        return out[[unique[p] for p in pairs]]

    def _forward_parallel(self, chunks: list[list[int]], pairs: list[Pair], out: np.ndarray) -> None:
        """Run sub-batches on `workers` threads, the costliest first (each thread takes the next
        one when it is free), so the threads finish together."""
        assert self._pool is not None
        todo = deque(sorted(chunks, key=lambda c: -len(c) * pair_tokens(pairs[c[-1]])))

        def work() -> None:
            with torch.inference_mode():
                while True:
                    try:
                        chunk = todo.popleft()
                    except IndexError:
                        return
                    out[chunk] = self._forward_padded([pairs[i] for i in chunk])

        helpers = [self._pool.submit(work) for _ in range(min(self.workers, len(chunks)) - 1)]
        work()
        for helper in helpers:
            helper.result()

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


def _hypothesis_too_long(window: int, exc: object) -> str:
    return (
        f"a hypothesis does not fit the model's window of {window} tokens "
        f"({exc}); use shorter labels or a shorter hypothesis_template"
    )


class PairTokenizer:
    """(premise, hypothesis) pairs from parts tokenized once, identical to the pipeline's.

    The pipeline tokenizes each pair whole: `tokenizer(text, hypothesis, truncation="only_first",
    max_length=window)`. A fast tokenizer does that in three steps: encode the text, encode the
    hypothesis (each alone, no special tokens), then `post_process`, which first cuts the premise
    so the pair fits the window and then adds the special tokens (and token types). Doing the
    same steps here lets a request of T texts x L labels run T + L encodes instead of T x L, and
    a hypothesis seen before (the common case: callers reuse their label sets) runs none: an LRU
    of hypothesis encodings survives across requests.

    Truncation follows `tokenizers` exactly: when the pair is longer than the window, the premise
    loses `total - window` tokens from the tokenizer's truncation side; when the premise is too
    short for that, the tokenizer refuses (and so do we, with a ClientError).
    """

    def __init__(
        self, tokenizer: Any, window: int, uses_token_types: bool, hypothesis_cache: int = 4096
    ):
        from tokenizers import Tokenizer

        # A private copy of the Rust tokenizer with truncation and padding off: the HF wrapper
        # sets those on its backend per call, and post_process would apply them.
        core = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
        core.no_truncation()
        core.no_padding()
        self._core = core
        self._window = window
        self._specials = tokenizer.num_special_tokens_to_add(pair=True)
        self._side = getattr(tokenizer, "truncation_side", "right")
        self._types = uses_token_types
        self._hyps: OrderedDict[str, Any] = OrderedDict()
        self._hyp_capacity = hypothesis_cache
        self._lock = threading.Lock()  # encode may run on worker threads

    def hypotheses(self, hyps: Sequence[str]) -> list[Any]:
        """Encodings of each hypothesis, from the LRU when seen before."""
        with self._lock:
            found = {h: self._hyps[h] for h in dict.fromkeys(hyps) if h in self._hyps}
            for h in found:
                self._hyps.move_to_end(h)
        missing = [h for h in dict.fromkeys(hyps) if h not in found]
        if missing:
            encoded = self._core.encode_batch(missing, add_special_tokens=False)
            with self._lock:
                for h, enc in zip(missing, encoded):
                    found[h] = enc
                    self._hyps[h] = enc
                while len(self._hyps) > self._hyp_capacity:
                    self._hyps.popitem(last=False)
        return [found[h] for h in hyps]

    def encode(self, texts: Sequence[str], hyps: Sequence[str]) -> EncodedRequest:
        hyp_encodings = self.hypotheses(hyps)
        distinct = list(dict.fromkeys(texts))
        by_text = dict(zip(distinct, self._core.encode_batch(distinct, add_special_tokens=False)))
        pairs: list[Pair] = []
        truncated: list[int] = []
        # One premise per (text, budget): hypotheses of equal length share the cut copy.
        cut: dict[tuple[str, int], Any] = {}
        # Room left for the text beside each hypothesis; len(encoding) is its token count
        # (without building the ids list).
        budgets = [self._window - len(hyp) - self._specials for hyp in hyp_encodings]
        for index, text in enumerate(texts):
            premise = by_text[text]
            premise_tokens = len(premise)
            was_cut = False
            for hyp, budget in zip(hyp_encodings, budgets):
                first = premise
                if premise_tokens > budget:
                    if budget <= 0:
                        raise ClientError(_hypothesis_too_long(
                            self._window, "the hypothesis alone leaves no room for the text"))
                    first = cut.get((text, budget))
                    if first is None:
                        first = copy.deepcopy(premise)
                        first.truncate(budget, direction=self._side)
                        cut[(text, budget)] = first
                    was_cut = True
                pair = self._core.post_process(first, hyp, add_special_tokens=True)
                pairs.append((tuple(pair.ids), tuple(pair.type_ids) if self._types else None))
            if was_cut:
                truncated.append(index)
        return EncodedRequest(pairs=pairs, truncated=truncated)


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


def _balanced(order: list[int], pairs: list[Pair], buckets: int, workers: int) -> list[list[int]]:
    """Cut length-sorted indices into a multiple of `workers` runs of about equal tokens.

    Sub-batches of equal cost keep the threads busy to the end: with the token budget's own
    cut, a batch of 3 sub-batches on 2 threads leaves one thread idle for a third of the batch.
    The count is the budget's count rounded up to a multiple of workers, so no run is larger
    than the budget allows (on average), and a lone request's 5 pairs run as 3 + 2.
    """
    runs = -(-max(buckets, 1) // workers) * workers
    runs = min(runs, len(order))
    total = sum(pair_tokens(pairs[i]) for i in order)
    chunks: list[list[int]] = [[] for _ in range(runs)]
    seen = 0
    for i in order:
        n = pair_tokens(pairs[i])
        # The run whose share of the token total this pair's midpoint falls in.
        k = min(runs - 1, int((seen + n / 2) * runs / total)) if total else 0
        chunks[k].append(i)
        seen += n
    return [c for c in chunks if c]


def replica_cpus() -> int:
    """CPUs this process may use: Ray's OMP_NUM_THREADS (set from the replica's num_cpus) when
    present, else the CPUs in this process's affinity mask."""
    threads = os.environ.get("OMP_NUM_THREADS", "")
    if threads.isdigit() and int(threads) > 0:
        return int(threads)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def thread_plan(
    torch_threads: int | None, forward_workers: int | None, device: torch.device, cpus: int
) -> tuple[int, int]:
    """(torch intra-op threads, sub-batches run at once) for a replica with `cpus` CPUs.

    On CPU the default is one torch thread per sub-batch and one sub-batch per CPU. This
    model's ops are small (hidden 768, sequences of 10-200 tokens): with two intra-op threads
    a forward spends much of its time in OpenMP barriers between ops, and when another process
    takes a core (a shared node, the HTTP proxy, the ingress) a barrier waits a whole time
    slice for it. Independent single-threaded sub-batches have no barriers and degrade
    gracefully. Measured on this 2-core machine, shared: 1 thread x 2 sub-batches beat
    2 threads x 1 in 5 of 6 interleaved trials (bench/bench.py reports the comparison).
    On a GPU one stream does the work: one worker.
    """
    if device.type != "cpu":
        return torch_threads or torch.get_num_threads(), 1
    if torch_threads is None and forward_workers is None:
        return 1, cpus
    if forward_workers is None:
        assert torch_threads is not None
        return torch_threads, max(1, cpus // torch_threads)
    if torch_threads is None:
        return max(1, cpus // forward_workers), forward_workers
    return torch_threads, forward_workers

