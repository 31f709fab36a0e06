"""What bench/bench_peers.py needs to serve our NLI model on a peer that knows no zero-shot:
a one-logit copy whose single row is the entailment row (a reranker: infinity's /rerank), a copy
whose text-classification pipeline returns raw logits (infinity's /classify), the string that
joins a (text, hypothesis) pair into one input with the pair's own token ids, and the pipeline's
single-label scores from entailment logits. Pure apart from torch/transformers; no timing here.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def single_label_scores(entailment_logits: Sequence[float]) -> np.ndarray:
    """The pipeline's single-label scores: softmax over the labels of their entailment logits."""
    x = np.asarray(entailment_logits, dtype=np.float64)
    e = np.exp(x - x.max())
    scores: np.ndarray = e / e.sum()
    return scores


def head_layer(model: Any) -> Any:
    """The Linear layer that produces a sequence classifier's logits (RoBERTa's
    classifier.out_proj, BERT's classifier): the last Linear with num_labels outputs."""
    import torch

    found = [
        m
        for _, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and m.out_features == model.config.num_labels
    ]
    if not found:
        raise ValueError("no Linear layer with num_labels outputs in this model")
    return found[-1]


def one_logit_copy(model_dir: Path, out: Path, entailment: int) -> Path:
    """The model with a one-row head, that row the entailment row: a reranker whose logit is the
    original model's entailment logit (what infinity's /rerank serves)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    head = head_layer(model)
    row = torch.nn.Linear(head.in_features, 1, bias=head.bias is not None)
    with torch.no_grad():
        row.weight.copy_(head.weight[entailment : entailment + 1])
        if head.bias is not None:
            row.bias.copy_(head.bias[entailment : entailment + 1])
    parent = model.get_submodule(
        next(n for n, m in model.named_modules() if m is head).rpartition(".")[0]
    )
    for name, child in parent.named_children():
        if child is head:
            setattr(parent, name, row)
    model.config.num_labels = 1
    model.config.id2label = {0: "entailment"}
    model.config.label2id = {"entailment": 0}
    model.num_labels = 1
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(out)
    portable_tokenizer_config(out)
    return out


def raw_logits_copy(model_dir: Path, out: Path) -> Path:
    """The model as it is, its config saying problem_type "regression": transformers'
    text-classification pipeline (infinity's /classify) then returns raw logits, not softmax."""
    out.mkdir(parents=True, exist_ok=True)
    for f in model_dir.iterdir():
        if f.is_file():
            shutil.copy2(f, out / f.name)
    config = json.loads((out / "config.json").read_text())
    config["problem_type"] = "regression"
    (out / "config.json").write_text(json.dumps(config, indent=2))
    portable_tokenizer_config(out)
    return out


def portable_tokenizer_config(model_dir: Path) -> None:
    """transformers 5 saves a fast tokenizer as class "TokenizersBackend", which transformers 4
    (the peers' venv) does not know; both load tokenizer.json as "PreTrainedTokenizerFast"."""
    path = model_dir / "tokenizer_config.json"
    config = json.loads(path.read_text())
    if config.get("tokenizer_class") == "TokenizersBackend":
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
        path.write_text(json.dumps(config, indent=2))


def pair_joiner(tokenizer: Any) -> str:
    """The string that joins (text, hypothesis) into one input with the pair's own token ids:
    two separators for RoBERTa-style tokenizers (<s> A </s></s> B </s>), one for BERT-style
    ([CLS] A [SEP] B [SEP]; token type ids then differ, see joined_matches_pair)."""
    sep = tokenizer.sep_token
    probe = ("the quick brown fox", "This example is sports.")
    pair = tokenizer(*probe)["input_ids"]
    for joiner in (sep + sep, sep, f" {sep} "):
        if tokenizer(probe[0] + joiner + probe[1])["input_ids"] == pair:
            return joiner
    raise ValueError(f"no separator joins a pair into the pair's ids for {type(tokenizer)}")


def joined_matches_pair(tokenizer: Any, text: str, hypothesis: str, joiner: str) -> bool:
    """Whether the joined string tokenizes to the pair's ids (and token types, where the model
    has them: a single string gets type 0 throughout, a BERT pair type 1 on its second part)."""
    pair = tokenizer(text, hypothesis)
    joined = tokenizer(text + joiner + hypothesis)
    same = pair["input_ids"] == joined["input_ids"]
    if "token_type_ids" in pair:
        same = same and pair["token_type_ids"] == joined["token_type_ids"]
    return bool(same)
