"""The prefilter's engine: a sentence-transformers bi-encoder that ranks a request's labels
against each text, so that only the k most similar go to the cross-encoder.

It loads the model with `SentenceTransformer(dir)`, so the model's own modules (its pooling
config, ...) decide how a text becomes a vector; vectors are normalised, so a dot product is
their cosine. Hypotheses ("This example is {label}.") are embedded once per (model, template,
label) and kept in a bounded LRU: a taxonomy sent again costs only its texts. No Ray here: the
Prefilter deployment wraps one `BiEncoder`, and tests and benchmarks drive it directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from serve_app.core.lru import LRU
from serve_app.core.nli import hypotheses
from serve_app.engine.threads import replica_cpus

# Sentences per forward inside one `encode` call (sentence-transformers sorts them by length
# first, so a batch pads little); a request's new labels may be thousands.
ENCODE_BATCH_SIZE = 64

LabelKey = tuple[str, str, str]  # (model, template, label)


@dataclass(frozen=True)
class LabelLookup:
    """A request's label embeddings, in its label order, and what the cache knew of them
    (counted over distinct labels: a label sent twice is looked up once)."""

    embeddings: np.ndarray  # (labels, dimensions), float32, unit length
    hits: int
    misses: int


def top_k_indices(text_vectors: np.ndarray, label_vectors: np.ndarray, k: int) -> list[list[int]]:
    """For each text, the indices (ascending) of the k labels most similar to it.

    Cosine similarity of unit vectors. Labels scoring above a text's k-th highest score are
    kept, and ties at it go to the earliest labels, so the answer never depends on the order
    `argpartition` leaves them in; with k >= labels every label is kept, in request order.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    similarity = text_vectors @ label_vectors.T
    n = similarity.shape[1]
    if k >= n:
        return [list(range(n)) for _ in range(similarity.shape[0])]
    cut = np.argpartition(similarity, n - k, axis=1)[:, n - k]
    kept = []
    for row, at in zip(similarity, cut):
        above = np.flatnonzero(row > row[at])
        tied = np.flatnonzero(row == row[at])[: k - len(above)]
        kept.append(np.union1d(above, tied).tolist())
    return kept


class BiEncoder:
    """One loaded bi-encoder and its cache of label embeddings.

    `name` is the configured model (hub id or directory): it keys the cache. `source` is the
    resolved local directory the model is loaded from, never touching the network.
    """

    def __init__(
        self,
        source: str,
        name: str,
        device: str = "auto",
        dtype: str = "auto",
        label_cache_entries: int = 100_000,
    ) -> None:
        import torch
        from sentence_transformers import SentenceTransformer

        from serve_app.engine.backends.torch_backend import TorchBackend

        self.name = name
        self.source = source
        self.device = TorchBackend.pick_device(device)
        self.dtype = (
            dtype if dtype != "auto" else ("float16" if self.device == "cuda" else "float32")
        )
        # The replica's own process: its intra-op threads follow its CPUs (Ray's
        # OMP_NUM_THREADS, from num_cpus), as the Classifier's do.
        self.threads = replica_cpus() if self.device == "cpu" else 1
        if self.device == "cpu":
            torch.set_num_threads(self.threads)
        self.model = SentenceTransformer(
            source,
            device=self.device,
            local_files_only=True,
            model_kwargs={"dtype": getattr(torch, self.dtype)},
        )
        self.model.eval()
        self.cache: LRU[LabelKey, np.ndarray] = LRU(label_cache_entries)

    def embed(self, sentences: Sequence[str]) -> np.ndarray:
        """Unit-length float32 embeddings (len(sentences), dimensions); a sentence sent twice
        is embedded once."""
        unique = list(dict.fromkeys(sentences))
        if not unique:
            return np.zeros((0, self.dimensions), dtype=np.float32)
        vectors = self.model.encode(
            unique,
            batch_size=ENCODE_BATCH_SIZE,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        vectors = np.asarray(vectors, dtype=np.float32)
        if len(unique) == len(sentences):
            return vectors
        row = {sentence: i for i, sentence in enumerate(unique)}
        return vectors[[row[s] for s in sentences]]

    def label_embeddings(self, labels: Sequence[str], template: str) -> LabelLookup:
        """The embedding of each label's hypothesis: from the cache, or embedded now (and
        cached)."""
        distinct = list(dict.fromkeys(labels))
        keys: list[LabelKey] = [(self.name, template, label) for label in distinct]
        found = self.cache.get_many(keys)
        by_label = {label: vector for label, vector in zip(distinct, found) if vector is not None}
        missing = [label for label in distinct if label not in by_label]
        if missing:
            fresh = self.embed(hypotheses(missing, template))
            # Copies: a cached row must not keep the whole batch's array alive.
            rows = {label: vector.copy() for label, vector in zip(missing, fresh)}
            by_label.update(rows)
            self.cache.put_many(((self.name, template, label), v) for label, v in rows.items())
        return LabelLookup(
            embeddings=np.stack([by_label[label] for label in labels]),
            hits=len(distinct) - len(missing),
            misses=len(missing),
        )

    def rank(
        self, texts: Sequence[str], labels: Sequence[str], template: str, k: int
    ) -> list[list[int]]:
        """A whole request, here and now (tests, benchmarks; the service batches `embed`)."""
        lookup = self.label_embeddings(labels, template)
        return top_k_indices(self.embed(texts), lookup.embeddings, k)

    @property
    def dimensions(self) -> int:
        dimensions = self.model.get_embedding_dimension()
        assert dimensions is not None
        return int(dimensions)

    def warm_up(self) -> None:
        """One short forward, so the first request pays no kernel set-up."""
        self.embed(["This example is a warm-up."])

    def cache_stats(self) -> dict[str, int]:
        return {
            "entries": len(self.cache),
            "capacity": self.cache.capacity,
            "hits": self.cache.hits,
            "misses": self.cache.misses,
        }

    def describe(self) -> dict[str, Any]:
        return {
            "model": self.name,
            "source": self.source,
            "device": self.device,
            "dtype": self.dtype,
            "dimensions": self.dimensions,
            "max_seq_length": self.model.max_seq_length,
            "threads": self.threads,
            "label_cache": self.cache_stats(),
        }
