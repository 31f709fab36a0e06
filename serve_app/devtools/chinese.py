"""A tiny random Chinese NLI cross-encoder laid out like IDEA-CCNL/Erlangshen-Roberta-110M-NLI.

The real model (the `chinese` preset) is a `BertForSequenceClassification` whose hub repo holds
config.json (id2label CONTRADICTION / NEUTRAL / ENTAILMENT), the weights and a Chinese WordPiece
`vocab.txt` in the layout of bert-base-chinese ([PAD], [unused1..99], [UNK], [CLS], [SEP],
[MASK], then single characters), and no tokenizer files besides: `AutoTokenizer` builds a
BertTokenizer from vocab.txt with no model_max_length, so the window is the model's positions.
This builds the same files at a tiny size, for parity tests with Chinese texts:

    directory = build_chinese_bert(tmp / "erlangshen-like")

Scores are random; config.json carries `zsc_random_weights: true`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

LABEL_ORDER = ("CONTRADICTION", "NEUTRAL", "ENTAILMENT")
POSITIONS = 64  # max_position_embeddings: the window, as no tokenizer file sets one

# The seed's Chinese quick start, its labels and template, and a few hundred common characters,
# so texts in tests are mostly known characters (others become [UNK], as with the real vocab).
SEED_TEXTS = ["人工智能正在改变世界", "足球比赛非常精彩", "这家餐厅的服务很差"]
SEED_LABELS = ["科技", "体育", "餐饮", "情感积极", "情感消极"]
_COMMON = (
    "的一是不了人我在有他这为之大来以个中上们到说国和地也子时道出而要于就下得可你年生自会那后能对"
    "着事其里所去行过家十用发天如然作方成者多日都三小军二无同么经法当起与好看学进种将还分此心前面"
    "又定见只主没公从已动两长知民样现体实加量都本物电开关点高气正机新问力理外业产全工见明间最果果"
    "手最样文化教育经济政治市场公司价格银行股票医院健康天气下雨大风城市交通旅游音乐电影比赛球队"
    "冠军服务客户订单退款质量快速慢差好坏喜欢讨厌满意失望积极消极情感科技技术智能网络手机电脑软件"
    "数据模型世界改变正在非常精彩餐厅饭菜味道价格便宜贵环境干净热情朋友周末今天明天昨天新闻报道"
    "这段文本关于例子属于类别话题内容句子问题答案分类零样本中文英文语言翻译"
)
_PUNCTUATION = "，。！？、；：“”‘’（）《》【】…—·"


def chinese_vocab() -> list[str]:
    """bert-base-chinese's layout: specials at its indices, then single characters."""
    chars: list[str] = []
    for char in "".join(SEED_TEXTS) + "".join(SEED_LABELS) + _COMMON + _PUNCTUATION:
        if char not in chars:
            chars.append(char)
    ascii_tokens = [*"0123456789", *"abcdefghijklmnopqrstuvwxyz", *".,!?;:'\"()[]{}-"]
    unused = [f"[unused{i}]" for i in range(1, 100)]
    return ["[PAD]", *unused, "[UNK]", "[CLS]", "[SEP]", "[MASK]", *ascii_tokens, *chars]


def build_chinese_bert(out_dir: str | Path, *, seed: int = 0) -> Path:
    """Write the tiny Erlangshen-like model to out_dir (config, weights, vocab.txt only)."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vocab = chinese_vocab()
    (out / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    id2label = dict(enumerate(LABEL_ORDER))
    labels: dict[str, Any] = dict(
        num_labels=len(id2label),
        id2label=id2label,
        label2id={name: i for i, name in id2label.items()},
    )
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=POSITIONS,
        type_vocab_size=2,
        pad_token_id=0,
        **labels,
        initializer_range=0.5,  # wide init: clear margins between labels, not float noise
    )
    torch.manual_seed(seed)
    BertForSequenceClassification(config).save_pretrained(out)
    config_file = out / "config.json"
    data = json.loads(config_file.read_text())
    data["zsc_random_weights"] = True
    config_file.write_text(json.dumps(data, indent=2))
    return out
