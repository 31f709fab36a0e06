"""The zero-shot math, exactly as `transformers`' ZeroShotClassificationPipeline does it.

Plain Python and numpy: label parsing, hypotheses, the entailment/contradiction index lookup and
score normalisation, shared by every serving path (HTTP, handle, jobs).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from serve_app.core.chunks import combine, predicted
from serve_app.core.results import TextResult


class ModelLabelError(ValueError):
    """The model's label map has no usable entailment label."""


@dataclass(frozen=True)
class NLILabelIndices:
    entailment: int
    contradiction: int


def parse_labels(labels: str | Sequence[str]) -> list[str]:
    """Split a comma-separated string the way the pipeline does; lists pass through."""
    if isinstance(labels, str):
        return [label.strip() for label in labels.split(",") if label.strip()]
    return list(labels)


def hypotheses(labels: Sequence[str], template: str) -> list[str]:
    return [template.format(label) for label in labels]


def label_map_example(id2label: Mapping[int, str]) -> str:
    """A `label_map` line for this model's own outputs, for error messages."""
    n = len(id2label)
    if n >= 3:
        return f"label_map: {{entailment: {n - 1}, contradiction: 0}}"
    return "label_map: {entailment: 1}"


def nli_label_indices(
    id2label: Mapping[int, str], label_map: Mapping[str, int | None] | None = None
) -> NLILabelIndices:
    """Find entailment and contradiction in the model's label map, or take them from `label_map`.

    Entailment is the label starting with "entail" (case-insensitive), as in the pipeline.
    Contradiction is the label starting with "contradict". The pipeline hard-codes index 0 (or
    -1 when entailment is 0), which is wrong for maps such as {neutral, entailment,
    contradiction}; we only fall back to that rule when no label says "contradict", which is
    the two-label (entailment / not-entailment) case, where the other label stands in.
    `label_map` ({"entailment": i, "contradiction": j}, contradiction optional) names the
    indices directly, for models whose config calls its outputs LABEL_0, LABEL_1, ...
    """
    items = sorted((int(i), str(name)) for i, name in id2label.items())
    n = len(items)
    names = ", ".join(f"{i}: {name!r}" for i, name in items)
    if n < 2:
        raise ModelLabelError(
            f"An NLI model needs at least two outputs (entailment and another); this one has "
            f"{n} ({{{names}}})."
        )
    mapped = dict(label_map or {})
    entailment = mapped.get("entailment")
    if entailment is None:
        entailment = next((i for i, name in items if name.lower().startswith("entail")), None)
    if entailment is None:
        raise ModelLabelError(
            "This model is not an NLI cross-encoder zsc can use as it is: its label map {"
            + names
            + "} has no label starting with 'entail'. If it is an NLI model whose outputs are "
            "unnamed, set label_map beside model to the output indices its model card gives, "
            f"e.g. {label_map_example(id2label)}; otherwise use an NLI model (for example "
            "cross-encoder/nli-MiniLM2-L6-H768)."
        )
    contradiction = mapped.get("contradiction")
    if contradiction is None:
        contradiction = next(
            (i for i, name in items if name.lower().startswith("contradict")), None
        )
    if contradiction is None:
        contradiction = n - 1 if entailment == 0 else 0
    for key, index in (("entailment", entailment), ("contradiction", contradiction)):
        if not 0 <= index < n:
            raise ModelLabelError(
                f"label_map.{key}={index} is not an output of this model: it has {n} outputs "
                f"(0..{n - 1}: {names})."
            )
    if entailment == contradiction:
        raise ModelLabelError(
            f"label_map: entailment and contradiction are both output {entailment}; they must "
            "be two different outputs."
        )
    return NLILabelIndices(entailment=entailment, contradiction=contradiction)


def _softmax(x: np.ndarray) -> np.ndarray:
    # Max-subtracted, so large logits cannot overflow (the pipeline's plain exp can).
    shifted = x - x.max(axis=-1, keepdims=True)
    e = np.exp(shifted)
    out: np.ndarray = e / e.sum(axis=-1, keepdims=True)
    return out


def label_scores(logits: np.ndarray, indices: NLILabelIndices, multi_label: bool) -> np.ndarray:
    """Scores for one text from its (n_labels, n_classes) logits, in label order.

    Single-label: softmax of the entailment logits across labels. Multi-label, and any request
    with one label: per-label softmax over [contradiction, entailment].
    """
    logits = np.asarray(logits, dtype=np.float32)
    if logits.ndim != 2:
        raise ValueError(f"expected (labels, classes) logits, got shape {logits.shape}")
    if multi_label or logits.shape[0] == 1:
        pair = logits[:, [indices.contradiction, indices.entailment]]
        return _softmax(pair)[:, 1]
    return _softmax(logits[:, indices.entailment])


def rank(sequence: str, labels: Sequence[str], scores: np.ndarray) -> TextResult:
    """Sort labels by score, highest first, with the pipeline's own tie order."""
    # Same call as the pipeline (numpy argsort, reversed) so equal scores order identically.
    order = list(reversed(np.asarray(scores).argsort()))
    return TextResult(
        sequence=sequence,
        labels=[labels[i] for i in order],
        scores=[float(scores[i]) for i in order],
    )


def score_texts(
    texts: Sequence[str],
    label_sets: Sequence[Sequence[str]],
    logits: np.ndarray,
    indices: NLILabelIndices,
    multi_label: bool,
) -> list[TextResult]:
    """One result per text from text-major logits: text 0 x its labels, then text 1, ...

    Each text may have its own labels (the prefilter keeps a different top k per text); its
    single-label softmax runs over those labels only.
    """
    logits = np.asarray(logits, dtype=np.float32)
    expected = sum(len(labels) for labels in label_sets)
    if len(texts) != len(label_sets) or logits.ndim != 2 or logits.shape[0] != expected:
        raise ValueError(f"expected {expected} rows of logits, got shape {logits.shape}")
    results = []
    start = 0
    for text, labels in zip(texts, label_sets):
        rows = logits[start : start + len(labels)]
        results.append(rank(text, labels, label_scores(rows, indices, multi_label)))
        start += len(labels)
    return results


def score_windows(
    texts: Sequence[str],
    label_sets: Sequence[Sequence[str]],
    windows: Sequence[int],
    logits: np.ndarray,
    indices: NLILabelIndices,
    multi_label: bool,
    aggregate: str,
) -> list[TextResult]:
    """One result per text from its windows' logits (window-major within each text: window 0 x
    the text's labels, then window 1, ...). Each window is scored like a text; a label's scores
    combine over the windows by `aggregate`, single-label answers renormalised to sum to 1."""
    logits = np.asarray(logits, dtype=np.float32)
    expected = sum(len(labels) * n for labels, n in zip(label_sets, windows))
    if len(texts) != len(label_sets) or len(texts) != len(windows) or logits.shape[0] != expected:
        raise ValueError(f"expected {expected} rows of logits, got shape {logits.shape}")
    results = []
    start = 0
    for text, labels, n in zip(texts, label_sets, windows):
        per_window = []
        for _ in range(n):
            rows = logits[start : start + len(labels)]
            per_window.append(label_scores(rows, indices, multi_label))
            start += len(labels)
        renormalise = not multi_label and len(labels) > 1
        scores = combine(per_window, aggregate, renormalise)
        results.append(dataclasses.replace(rank(text, labels, scores), windows=n))
    return results


def with_predicted(
    results: Sequence[TextResult], threshold: float, multi_label: bool
) -> list[TextResult]:
    """Each result with `predicted`: its labels at or above `threshold` (see chunks.predicted)."""
    return [
        dataclasses.replace(r, predicted=predicted(r.labels, r.scores, threshold, multi_label))
        for r in results
    ]
