"""Build NLI cross-encoders with random weights, locally, for tests, demos and benchmarks.

No model can be downloaded on CI machines, so the tests build one here: a RoBERTa sequence
classifier with the real model's label map and a byte-level BPE tokenizer trained on a few KB of
text. It is saved with `save_pretrained` and loaded back through the same `from_pretrained` path
as the real model. `full_size=True` builds the real model's shape (82.1M parameters), whose
forward costs what the real one costs: the benchmarks use it.

Its scores are random. `config.json` carries `zsc_random_weights: true` so the service warns.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

DEFAULT_LABEL_ORDER = ("contradiction", "entailment", "neutral")

# A few KB of varied English to train the BPE vocabulary on: enough merges that ordinary
# words become a handful of tokens, as with a real tokenizer.
_CORPUS = (
    """
The quick brown fox jumps over the lazy dog. This example is about sports, politics, technology,
business, health, science, travel, food, music, movies, weather, finance and education.
The new phone's battery lasts two days and the camera takes sharp pictures at night.
The central bank raised interest rates again to fight inflation, and markets fell sharply.
Our team won the championship after a dramatic penalty shootout in the final minute.
Scientists discovered a new species of frog in the rainforest during a long expedition.
I have a problem with my order: the package arrived damaged and I want a refund urgently.
The recipe needs two cups of flour, three eggs, a pinch of salt and some fresh butter.
Heavy rain and strong winds are expected tomorrow across the northern coast and the mountains.
The government announced a plan to build new schools and hospitals in rural regions.
Customers praised the friendly staff, the clean rooms and the breakfast at the hotel.
The software update fixed several bugs, improved performance and added a dark mode.
Stocks of technology companies rallied after strong quarterly earnings were reported.
Doctors recommend regular exercise, a balanced diet and enough sleep for a healthy life.
The film received excellent reviews for its acting, music and beautiful photography.
Please cancel my subscription; the service has been slow and support never answered.
Election results will be announced tonight after all the votes have been counted.
A delayed flight left hundreds of travellers stranded at the airport overnight.
The museum opens a new exhibition of modern art from young painters next month.
Engineers are testing an electric car that charges in ten minutes and drives far.
This example is positive. This example is negative. This example is neutral. urgent, not urgent.
"""
    * 3
)

_SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]


def _build_tokenizer(out: Path, vocab_size: int, max_length: int) -> None:
    from tokenizers import ByteLevelBPETokenizer, processors
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        _CORPUS.splitlines(), vocab_size=vocab_size, min_frequency=1, special_tokens=_SPECIAL_TOKENS
    )
    # RoBERTa's pair layout: <s> A </s></s> B </s>
    bpe.post_processor = processors.RobertaProcessing(
        ("</s>", bpe.token_to_id("</s>")), ("<s>", bpe.token_to_id("<s>"))
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        sep_token="</s>",
        cls_token="<s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
        model_max_length=max_length,
        model_input_names=["input_ids", "attention_mask"],
    )
    fast.save_pretrained(out)


def wordpiece_tokenizer(
    lines: Sequence[str], vocab_size: int, max_length: int, truncation_side: str = "right"
) -> Any:
    """A BERT-style tokenizer trained on `lines`: [CLS] A [SEP] B [SEP], token types 0 then 1."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    core = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    core.normalizer = normalizers.BertNormalizer(lowercase=True)
    core.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    core.train_from_iterator(
        lines, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials)
    )
    sep, cls = core.token_to_id("[SEP]"), core.token_to_id("[CLS]")
    assert sep is not None and cls is not None  # trained in as special tokens above
    core.post_processor = processors.BertProcessing(("[SEP]", sep), ("[CLS]", cls))
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        unk_token="[UNK]",
        sep_token="[SEP]",
        cls_token="[CLS]",
        pad_token="[PAD]",
        mask_token="[MASK]",
        model_max_length=max_length,
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
        truncation_side=truncation_side,
    )


def build_test_model(
    out_dir: str | Path,
    *,
    full_size: bool = False,
    label_order: Sequence[str] = DEFAULT_LABEL_ORDER,
    max_length: int | None = None,
    seed: int = 0,
    arch: str = "roberta",
) -> Path:
    """Write a random NLI cross-encoder to out_dir and return the directory.

    label_order is id2label in index order, e.g. ("entailment", "neutral", "contradiction") or
    ("entailment", "not_entailment") for a two-label model. arch="bert" builds a BERT-style
    model (WordPiece, token type ids) instead of RoBERTa.
    """
    if arch not in ("roberta", "bert"):
        raise ValueError(f"arch must be roberta or bert, not {arch!r}")
    import torch
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        RobertaConfig,
        RobertaForSequenceClassification,
    )

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if max_length is None:
        max_length = 512 if full_size else 64
    id2label = {i: name for i, name in enumerate(label_order)}
    labels: dict[str, Any] = dict(
        num_labels=len(id2label),
        id2label=id2label,
        label2id={name: i for i, name in id2label.items()},
        # The default init (0.02) makes a tiny model answer ~uniform scores for every input;
        # a wide init spreads them, so label order is decided by clear margins, not float noise.
        initializer_range=0.02 if full_size else 0.5,
    )
    # cross-encoder/nli-MiniLM2-L6-H768: RoBERTa, 6 layers, hidden 768, 82.1M parameters.
    full: dict[str, Any] = dict(
        vocab_size=50265,
        hidden_size=768,
        num_hidden_layers=6,
        num_attention_heads=12,
        intermediate_size=3072,
    )
    tiny: dict[str, Any] = dict(
        vocab_size=1000,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
    )
    shape = full if full_size else tiny
    if arch == "bert":
        wordpiece_tokenizer(_CORPUS.splitlines(), 1000, max_length).save_pretrained(out)
        bert = BertConfig(
            **shape, max_position_embeddings=max_length, pad_token_id=0, type_vocab_size=2, **labels
        )
        torch.manual_seed(seed)
        model: Any = BertForSequenceClassification(bert)
    else:
        _build_tokenizer(out, vocab_size=1000, max_length=max_length)
        roberta = RobertaConfig(
            **shape,
            max_position_embeddings=514 if full_size else max_length + 2,
            pad_token_id=1,
            bos_token_id=0,
            eos_token_id=2,
            type_vocab_size=1,
            **labels,
        )
        torch.manual_seed(seed)
        model = RobertaForSequenceClassification(roberta)
    model.save_pretrained(out)
    config_file = out / "config.json"
    data = json.loads(config_file.read_text())
    data["zsc_random_weights"] = True
    config_file.write_text(json.dumps(data, indent=2))
    return out


def build_test_bi_encoder(out_dir: str | Path, *, pooling: str = "mean", seed: int = 0) -> Path:
    """Write a tiny random sentence-transformers bi-encoder to out_dir and return the directory.

    A 2-layer BERT (WordPiece, hidden 32) and a Pooling module (`pooling`: mean, cls, max, ...),
    saved with `SentenceTransformer.save`, so `SentenceTransformer(out_dir)` loads it as it
    loads a hub bi-encoder (modules.json, 1_Pooling/config.json, ...). For the prefilter's
    mechanics: its similarities are random. config.json carries `zsc_random_weights: true`.
    """
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from transformers import BertConfig, BertModel

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    max_length = 64
    wordpiece_tokenizer(_CORPUS.splitlines(), 1000, max_length).save_pretrained(out)
    config = BertConfig(
        vocab_size=1000,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=max_length,
        pad_token_id=0,
        type_vocab_size=2,
        initializer_range=0.5,  # as for the tiny cross-encoder: clear margins, not float noise
    )
    torch.manual_seed(seed)
    BertModel(config).save_pretrained(out)
    transformer = Transformer(str(out), max_seq_length=max_length)
    model = SentenceTransformer(modules=[transformer, Pooling(config.hidden_size, pooling)])
    model.save(str(out), create_model_card=False)
    config_file = out / "config.json"
    data = json.loads(config_file.read_text())
    data["zsc_random_weights"] = True
    config_file.write_text(json.dumps(data, indent=2))
    return out


def place_in_hub_cache(model_dir: str | Path, hub_cache: str | Path, repo_id: str) -> str:
    """Copy a built model into a Hugging Face hub cache (`$HF_HOME/hub`) as if it had been
    downloaded from `repo_id`: `models--org--name/snapshots/<commit>/...` with `refs/main`
    naming that commit, which is derived from the files' contents. Returns the commit.

    What a node that was given the model (a baked image, `hf download`) holds, so tests can
    resolve a hub id offline without a hub.
    """
    import hashlib
    import shutil

    source = Path(model_dir)
    digest = hashlib.sha1(repo_id.encode())
    for path in sorted(p for p in source.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(source)).encode())
        digest.update(path.read_bytes())
    commit = digest.hexdigest()
    repo = Path(hub_cache) / ("models--" + repo_id.replace("/", "--"))
    shutil.copytree(source, repo / "snapshots" / commit, dirs_exist_ok=True)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return commit
