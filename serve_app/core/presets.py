"""Named model presets: `model: chinese` or `model: multilingual` instead of a hub id.

A preset is a hub id at a pinned revision, the output indices of its entailment and contradiction
labels, and a default hypothesis template in its language. `ModelConfig` resolves a preset once,
when the config is validated; the rest of the service only ever sees the hub id.

Where each pin comes from (the hub's own pages, read with the project's search tool):
- chinese: IDEA-CCNL/Erlangshen-Roberta-110M-NLI, a BERT (`BertForSequenceClassification`,
  Chinese WordPiece `vocab.txt`, no tokenizer_config.json, so the window is the 512 positions)
  fine-tuned from hfl/chinese-roberta-wwm-ext on four Chinese NLI sets. Its main branch
  (864d25be3ce5e90d9193cb49d9fbd52722cdc6b0) holds only pytorch_model.bin; 6caa3ec8... is the
  hub's safetensors conversion of that commit (refs/pr/2: model.safetensors beside the same
  config.json and vocab.txt), which is what the torch backend downloads. Its id2label is
  {0: CONTRADICTION, 1: NEUTRAL, 2: ENTAILMENT} (Fengshenbang's model docs); the label map is
  also given here, so the preset serves even if a copy of the config says LABEL_0..LABEL_2.
- multilingual: MoritzLaurer/mDeBERTa-v3-base-xnli-multilingual-nli-2mil7 (DeBERTa-v2,
  SentencePiece Unigram, 100 languages), id2label {0: entailment, 1: neutral, 2: contradiction},
  at b5113eb38ab63efdd7f280f8c144ea8b13f978ce (its main branch as pinned by several public
  projects; safetensors and onnx/ files included).
"""

from __future__ import annotations

from dataclasses import dataclass

CHINESE_TEMPLATE = "这段文本是关于{}的。"


@dataclass(frozen=True)
class ModelPreset:
    name: str
    model: str  # hub id
    revision: str | None  # a commit hash: the preset serves the same weights forever
    hypothesis_template: str  # the default template of requests that give none
    entailment: int  # output index of the entailment logit
    contradiction: int  # output index of the contradiction logit
    about: str

    def label_map(self) -> dict[str, int]:
        return {"entailment": self.entailment, "contradiction": self.contradiction}


PRESETS: dict[str, ModelPreset] = {
    preset.name: preset
    for preset in (
        ModelPreset(
            name="chinese",
            model="IDEA-CCNL/Erlangshen-Roberta-110M-NLI",
            revision="6caa3ec8d234d504b585d0378cc41b0a482f562e",
            hypothesis_template=CHINESE_TEMPLATE,
            entailment=2,
            contradiction=0,
            about="Chinese NLI cross-encoder (BERT, 110M parameters, 512 tokens).",
        ),
        ModelPreset(
            name="multilingual",
            model="MoritzLaurer/mDeBERTa-v3-base-xnli-multilingual-nli-2mil7",
            revision="b5113eb38ab63efdd7f280f8c144ea8b13f978ce",
            hypothesis_template="This example is {}.",
            entailment=0,
            contradiction=2,
            about="mDeBERTa-v3-base NLI in 100 languages (278M parameters, 512 tokens).",
        ),
    )
}


def find_preset(model: str) -> ModelPreset | None:
    """The preset `model` names, or None for a hub id or a directory (`./chinese` is a path)."""
    return PRESETS.get(model.strip().lower())
