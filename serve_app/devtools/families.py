"""Tiny random NLI cross-encoders of each model family users pick, built locally.

Each family has its real architecture (`*ForSequenceClassification` of its model type), its real
tokenizer format (byte-level BPE, WordPiece, or SentencePiece Unigram with the Precompiled
normalizer, converted by transformers' own slow->fast converters as the hub files were) and a
label map in a real model's order. Saved with `save_pretrained`, loaded back through
`from_pretrained`, like `test_models.build_test_model`. For parity tests across families:

    directory = build_family_model("xlm-roberta", tmp / "xlmr")

SentencePiece families need the `sentencepiece` package (to train the piece model) and
`protobuf` (to convert it). Scores are random; config.json carries `zsc_random_weights: true`.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serve_app.devtools.test_models import _CORPUS, build_test_model, wordpiece_tokenizer

# English, Chinese, emoji and full-width punctuation, so every family's vocabulary has pieces
# for the scripts the parity texts use (a piece model also needs enough distinct text).
MULTILINGUAL_LINES = [
    *[line for line in _CORPUS.splitlines() if line.strip()],
    "央行再次加息以对抗通货膨胀，市场大幅下跌。",
    "我们的球队在点球大战后赢得了冠军！",
    "新手机的电池可以使用两天，相机在夜间也能拍出清晰的照片。",
    "明天北方沿海和山区预计有大雨和强风。",
    "请取消我的订阅；服务太慢，客服从不回复。",
    "这个例子是关于体育、政治、科技、商业、健康和科学的。",
    "这部电影的表演、音乐和摄影都获得了好评。",
    "医生建议定期锻炼、均衡饮食和充足睡眠。",
    "Ｆｕｌｌ－ｗｉｄｔｈ：ＡＢＣ（１２３）！？ 「引用」『書名』【注意】",
    "Emoji 🎉🚀😀👍 are fun 🌧️ and ❤️ the weather ☀️",
    "Le chat dort sur le canapé. Der Hund spielt im Garten. El niño come una manzana.",
    "Москва — столица России. 東京は日本の首都です。 서울은 한국의 수도입니다.",
]
TINY: dict[str, Any] = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
)
WINDOW = 64  # the tokenizer's model_max_length for every tiny family
# Keys the real DeBERTa-v3 checkpoints carry, which DebertaV2Config reads without declaring.
REAL_DEBERTA_V3_KEYS: dict[str, Any] = {
    "position_buckets": 256,
    "norm_rel_ebd": "layer_norm",
    "share_att_key": True,
}
MARKER = "zsc_random_weights"


@dataclass(frozen=True)
class Family:
    """One family: how its tiny model is built, and what marks it."""

    name: str
    tokenizer_format: str  # "byte-level BPE", "WordPiece", "SentencePiece Unigram"
    label_order: tuple[str, ...]
    build: Callable[[Path, int], None]
    token_types: bool  # whether its pairs carry token type ids


def _labels(order: Sequence[str]) -> dict[str, Any]:
    id2label = dict(enumerate(order))
    return dict(
        num_labels=len(order),
        id2label=id2label,
        label2id={name: i for i, name in id2label.items()},
        initializer_range=0.5,  # wide init: clear margins between labels, not float noise
    )


def _save(model_class: Any, config: Any, out: Path, seed: int) -> None:
    import torch

    torch.manual_seed(seed)
    model_class(config).save_pretrained(out)


def _set_tokenizer_class(out: Path, name: str, **extra: Any) -> None:
    """Name the real tokenizer class in tokenizer_config.json, as the hub files do."""
    config_file = out / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config["tokenizer_class"] = name
    config.update(extra)
    config_file.write_text(json.dumps(config, indent=2, ensure_ascii=False))


# -- SentencePiece ------------------------------------------------------------------------------


class _SpmSource:
    """What transformers' converters read from a slow tokenizer: the piece file and a few flags."""

    def __init__(self, vocab_file: Path, **flags: Any) -> None:
        from transformers.convert_slow_tokenizer import import_protobuf

        self.vocab_file = str(vocab_file)
        self.add_prefix_space = True
        self.legacy = True
        self.do_lower_case = False
        self.split_by_punct = False
        self.__dict__.update(flags)
        proto = import_protobuf().ModelProto()
        proto.ParseFromString(vocab_file.read_bytes())
        self._ids = {piece.piece: i for i, piece in enumerate(proto.pieces)}

    def convert_tokens_to_ids(self, token: str) -> int:
        return self._ids[token]


def train_sentencepiece(out_file: Path, vocab_size: int, **options: Any) -> Path:
    """A Unigram piece model trained on MULTILINGUAL_LINES, with SentencePiece's default
    normalization (nmt_nfkc), whose rules the file carries as its precompiled charsmap."""
    import io

    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(MULTILINGUAL_LINES * 4),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="unigram",
        character_coverage=1.0,
        hard_vocab_limit=False,
        minloglevel=2,
        **options,
    )
    out_file.write_bytes(model.getvalue())
    return out_file


def _xlmr_tokenizer(out: Path) -> None:
    """XLM-R's files: sentencepiece.bpe.model (fairseq ids: <s> <pad> </s> <unk> first) and the
    tokenizer.json transformers' XLMRobertaConverter makes of it."""
    from transformers import XLMRobertaTokenizer
    from transformers.convert_slow_tokenizer import XLMRobertaConverter

    piece_file = train_sentencepiece(out / "sentencepiece.bpe.model", 600)
    source = _SpmSource(piece_file)
    source._ids = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}  # the converted (fairseq) ids
    core = XLMRobertaConverter(source).converted()
    tokenizer = XLMRobertaTokenizer(tokenizer_object=core, model_max_length=WINDOW)
    tokenizer.save_pretrained(out)


def _deberta_v3_tokenizer(out: Path) -> None:
    """DeBERTa-v3's files: spm.model ([PAD] [CLS] [SEP] [UNK] first) and the tokenizer.json
    transformers' DebertaV2Converter makes of it ([MASK] added after the pieces)."""
    from tokenizers import AddedToken
    from transformers import DebertaV2Tokenizer
    from transformers.convert_slow_tokenizer import DebertaV2Converter

    piece_file = train_sentencepiece(
        out / "spm.model",
        600,
        pad_id=0,
        bos_id=1,
        eos_id=2,
        unk_id=3,
        pad_piece="[PAD]",
        bos_piece="[CLS]",
        eos_piece="[SEP]",
        unk_piece="[UNK]",
    )
    core = DebertaV2Converter(_SpmSource(piece_file)).converted()
    core.add_special_tokens([AddedToken("[MASK]", special=True)])
    tokenizer = DebertaV2Tokenizer(
        tokenizer_object=core, model_max_length=WINDOW, do_lower_case=False, split_by_punct=False
    )
    tokenizer.save_pretrained(out)


# -- builders -----------------------------------------------------------------------------------


def _roberta(order: tuple[str, ...]) -> Callable[[Path, int], None]:
    def build(out: Path, seed: int) -> None:
        build_test_model(out, label_order=order, seed=seed)
        _set_tokenizer_class(out, "RobertaTokenizer")

    return build


def _wordpiece(out: Path, names: list[str]) -> None:
    wordpiece_tokenizer(MULTILINGUAL_LINES, 1000, WINDOW).save_pretrained(out)
    config_file = out / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config["model_input_names"] = names
    config_file.write_text(json.dumps(config, indent=2))


def _bert(out: Path, seed: int) -> None:
    from transformers import BertConfig, BertForSequenceClassification

    _wordpiece(out, ["input_ids", "token_type_ids", "attention_mask"])
    _set_tokenizer_class(out, "BertTokenizer")
    order = FAMILIES["bert"].label_order
    config = BertConfig(
        vocab_size=1000, max_position_embeddings=WINDOW, type_vocab_size=2, **TINY, **_labels(order)
    )
    _save(BertForSequenceClassification, config, out, seed)


def _distilbert(out: Path, seed: int) -> None:
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    _wordpiece(out, ["input_ids", "attention_mask"])
    _set_tokenizer_class(out, "DistilBertTokenizer")
    config = DistilBertConfig(
        vocab_size=1000,
        max_position_embeddings=WINDOW,
        dim=32,
        n_layers=2,
        n_heads=2,
        hidden_dim=64,
        **_labels(FAMILIES["distilbert"].label_order),
    )
    _save(DistilBertForSequenceClassification, config, out, seed)


def _electra(out: Path, seed: int) -> None:
    from transformers import ElectraConfig, ElectraForSequenceClassification

    _wordpiece(out, ["input_ids", "token_type_ids", "attention_mask"])
    _set_tokenizer_class(out, "ElectraTokenizer")
    config = ElectraConfig(
        vocab_size=1000,
        embedding_size=16,
        max_position_embeddings=WINDOW,
        **TINY,
        **_labels(FAMILIES["electra"].label_order),
    )
    _save(ElectraForSequenceClassification, config, out, seed)


def _xlm_roberta(out: Path, seed: int) -> None:
    from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification

    _xlmr_tokenizer(out)
    config = XLMRobertaConfig(
        vocab_size=len(json.loads((out / "tokenizer.json").read_text())["model"]["vocab"]),
        max_position_embeddings=WINDOW + 2,  # positions after the padding index, as the real 514
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        type_vocab_size=1,
        **TINY,
        **_labels(FAMILIES["xlm-roberta"].label_order),
    )
    _save(XLMRobertaForSequenceClassification, config, out, seed)


def _deberta_v3(family: str) -> Callable[[Path, int], None]:
    def build(out: Path, seed: int) -> None:
        from transformers import DebertaV2Config, DebertaV2ForSequenceClassification

        _deberta_v3_tokenizer(out)
        vocab = json.loads((out / "tokenizer.json").read_text())["model"]["vocab"]
        # DeBERTa-v3's attention: relative positions only, no absolute ones, no token types.
        config = DebertaV2Config(
            vocab_size=len(vocab) + 1,  # + [MASK]
            max_position_embeddings=512,
            relative_attention=True,
            pos_att_type=["p2c", "c2p"],
            position_biased_input=False,
            max_relative_positions=-1,
            type_vocab_size=0,
            pad_token_id=0,
            **TINY,
            **REAL_DEBERTA_V3_KEYS,
            **_labels(FAMILIES[family].label_order),
        )
        _save(DebertaV2ForSequenceClassification, config, out, seed)

    return build


def _bart(out: Path, seed: int) -> None:
    from transformers import BartConfig, BartForSequenceClassification

    build_test_model(out / "_bpe")  # the byte-level BPE tokenizer RoBERTa and BART share
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (out / "_bpe" / name).is_file():
            shutil.copy(out / "_bpe" / name, out / name)
    shutil.rmtree(out / "_bpe")
    _set_tokenizer_class(out, "BartTokenizer")
    config = BartConfig(
        vocab_size=1000,
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=WINDOW,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        decoder_start_token_id=2,
        forced_eos_token_id=2,
        init_std=0.5,
        **{
            k: v
            for k, v in _labels(FAMILIES["bart"].label_order).items()
            if k != "initializer_range"
        },
    )
    _save(BartForSequenceClassification, config, out, seed)


def _modernbert(out: Path, seed: int) -> None:
    """ModernBERT: a byte-level BPE with BERT's [CLS] A [SEP] B [SEP] layout, no token types,
    tokenizer_class PreTrainedTokenizerFast as on the hub; rotary positions."""
    from tokenizers import ByteLevelBPETokenizer, processors
    from transformers import (
        ModernBertConfig,
        ModernBertForSequenceClassification,
        PreTrainedTokenizerFast,
    )

    specials = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        MULTILINGUAL_LINES, vocab_size=1000, min_frequency=1, special_tokens=specials
    )
    cls, sep = bpe.token_to_id("[CLS]"), bpe.token_to_id("[SEP]")
    bpe.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0",
        pair="[CLS]:0 $A:0 [SEP]:0 $B:0 [SEP]:0",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer,
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        mask_token="[MASK]",
        model_max_length=WINDOW,
        model_input_names=["input_ids", "attention_mask"],
    ).save_pretrained(out)
    config = ModernBertConfig(
        vocab_size=1000,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=WINDOW,
        # A global layer, then a sliding-window one that a full-window pair spans, as in the real
        # model's mix (one global layer in three, a 128-token window).
        layer_types=["full_attention", "sliding_attention"],
        local_attention=16,
        pad_token_id=bpe.token_to_id("[PAD]"),
        cls_token_id=cls,
        sep_token_id=sep,
        bos_token_id=cls,
        eos_token_id=sep,
        initializer_range=0.5,
        initializer_cutoff_factor=2.0,
        **{
            k: v
            for k, v in _labels(FAMILIES["modernbert"].label_order).items()
            if k != "initializer_range"
        },
    )
    _save(ModernBertForSequenceClassification, config, out, seed)


# The label orders are those of real checkpoints of each family (their config.json id2label).
FAMILIES: dict[str, Family] = {
    f.name: f
    for f in [
        Family(
            "roberta",
            "byte-level BPE",
            ("contradiction", "entailment", "neutral"),  # cross-encoder/nli-roberta-base
            _roberta(("contradiction", "entailment", "neutral")),
            False,
        ),
        Family(
            "bert",
            "WordPiece",
            ("contradiction", "entailment", "neutral"),
            _bert,
            True,
        ),
        Family(
            "xlm-roberta",
            "SentencePiece Unigram",
            ("contradiction", "neutral", "entailment"),  # joeddav/xlm-roberta-large-xnli
            _xlm_roberta,
            False,
        ),
        Family(
            "mdeberta-v3",
            "SentencePiece Unigram",
            ("entailment", "neutral", "contradiction"),  # MoritzLaurer/mDeBERTa-v3-base-mnli-xnli
            _deberta_v3("mdeberta-v3"),
            True,
        ),
        Family(
            "deberta-v3",
            "SentencePiece Unigram",
            ("contradiction", "entailment", "neutral"),  # cross-encoder/nli-deberta-v3-base
            _deberta_v3("deberta-v3"),
            True,
        ),
        Family(
            "bart",
            "byte-level BPE",
            ("contradiction", "neutral", "entailment"),  # facebook/bart-large-mnli
            _bart,
            False,
        ),
        Family(
            "distilbert",
            "WordPiece",
            ("ENTAILMENT", "NEUTRAL", "CONTRADICTION"),  # typeform/distilbert-base-uncased-mnli
            _distilbert,
            False,
        ),
        Family(
            "electra",
            "WordPiece",
            ("entailment", "neutral", "contradiction"),
            _electra,
            True,
        ),
        Family(
            "modernbert",
            "byte-level BPE",
            ("entailment", "neutral", "contradiction"),  # tasksource/ModernBERT-base-nli
            _modernbert,
            False,
        ),
        Family(
            "two-class",
            "byte-level BPE",
            ("entailment", "not_entailment"),  # MoritzLaurer/*-zeroshot-v2.0
            _roberta(("entailment", "not_entailment")),
            False,
        ),
    ]
}


def build_family_model(family: str, out_dir: str | Path, *, seed: int = 0) -> Path:
    """Write a tiny random NLI cross-encoder of `family` (a key of FAMILIES) to out_dir."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; one of {', '.join(FAMILIES)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    FAMILIES[family].build(out, seed)
    config_file = out / "config.json"
    data = json.loads(config_file.read_text())
    data[MARKER] = True
    config_file.write_text(json.dumps(data, indent=2))
    return out
