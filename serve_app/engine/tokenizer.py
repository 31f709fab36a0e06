"""(premise, hypothesis) pairs tokenized exactly as the `transformers` pipeline does, cheaply.

The pipeline tokenizes each pair whole: `tokenizer(text, hypothesis, truncation="only_first",
max_length=window)`. A fast tokenizer does that in three steps: encode the text, encode the
hypothesis (each alone, no special tokens), then `post_process`, which first cuts the premise so
the pair fits the window and then adds the special tokens (and token types). Doing the same steps
here lets a request of T texts x L labels run T + L encodes instead of T x L, and a hypothesis
seen before (callers reuse their label sets) runs none: its encoding stays in a bounded LRU.

Truncation follows `tokenizers` exactly: when the pair is longer than the window, the premise
loses `total - window` tokens from the tokenizer's truncation side; when the premise is too
short for that, the tokenizer refuses, and so do we (a ClientError).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serve_app.core.errors import ClientError
from serve_app.core.lru import LRU
from serve_app.engine.protocol import Pair
from serve_app.engine.source import ModelLoadError

HYPOTHESIS_CACHE_ENTRIES = 4096
# Tokenizers without a saved limit report a huge sentinel for model_max_length.
NO_LIMIT = 100_000


@dataclass(frozen=True)
class EncodedRequest:
    pairs: list[Pair]  # text-major: text 0 x its hypotheses, then text 1, ...
    truncated: list[int]  # indices of texts cut to fit the window


def hypothesis_too_long(window: int, why: object) -> ClientError:
    return ClientError(
        f"a hypothesis does not fit the model's window of {window} tokens ({why}); "
        "use shorter labels or a shorter hypothesis_template"
    )


def load_hf_tokenizer(source: str, revision: str | None) -> Any:
    """The `transformers` tokenizer `AutoTokenizer` would give, without importing torch.

    `AutoTokenizer` imports transformers' modeling utilities, and torch with them whenever torch
    is installed; an ONNX replica must not. The class named by tokenizer_config.json is what
    `AutoTokenizer` resolves to, and importing it alone needs no torch.
    """
    import transformers

    config_file = Path(source) / "tokenizer_config.json"
    name = (
        json.loads(config_file.read_text()).get("tokenizer_class")
        if config_file.is_file()
        else None
    )
    tokenizer_class = getattr(transformers, name, None) if isinstance(name, str) else None
    if tokenizer_class is None:
        tokenizer_class = transformers.AutoTokenizer
    missing = _missing_converter(Path(source))
    if missing:
        # Without them transformers falls back to reading the file as tiktoken: refuse first.
        raise ModelLoadError(missing)
    try:
        return tokenizer_class.from_pretrained(source, revision=revision)
    except Exception as exc:  # unreadable or unconvertible files: one line that names them
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ModelLoadError(
            f"cannot load the tokenizer of {source} ({type(exc).__name__}: {first})"
        ) from None


def _missing_converter(directory: Path) -> str | None:
    """What to install when the directory has only a SentencePiece model to build a fast
    tokenizer from (no tokenizer.json): transformers converts it, as the pipeline does, with the
    `sentencepiece` package (or `protobuf`)."""
    if not directory.is_dir() or (directory / "tokenizer.json").is_file():
        return None
    models = sorted(p.name for p in directory.glob("*.model"))
    if not models:
        return None
    try:
        import google.protobuf  # noqa: F401
        import sentencepiece  # noqa: F401
    except ImportError:
        pass
    else:
        return None
    return (
        f"{directory} has a SentencePiece model ({', '.join(models)}) but no tokenizer.json; "
        "install `sentencepiece` and `protobuf` (pip install 'zsc[sentencepiece]') so it can be "
        "converted, or save the model's tokenizer.json beside it"
    )


def pair_window(
    source: str, model_max_length: object, max_positions: int | None, max_length: int | None
) -> int:
    """The longest pair the model takes: the smallest of the tokenizer's saved limit, the
    positions the model can use (config.json, after any offset) and the configured max_length.

    A tokenizer saved without `model_max_length` reports a huge sentinel; it then says nothing,
    and the position table decides (514 rows are 512 tokens for RoBERTa, source.py)."""
    limits = [max_positions, max_length]
    if isinstance(model_max_length, int) and 0 < model_max_length <= NO_LIMIT:
        limits.append(model_max_length)
    known = [n for n in limits if n is not None]
    if not known:
        raise ModelLoadError(
            f"neither the tokenizer of {source} (model_max_length) nor its config.json "
            "(max_position_embeddings) says how many tokens the model takes; set max_length"
        )
    return min(known)


class PairTokenizer:
    """Pairs from parts tokenized once, identical to the pipeline's (tests/test_parity.py)."""

    def __init__(
        self,
        core: Any,
        window: int,
        specials: int,
        truncation_side: str,
        pad_id: int,
        uses_token_types: bool,
    ) -> None:
        # A private copy of the Rust tokenizer with truncation and padding off: the HF wrapper
        # sets those on its backend per call, and post_process would apply them.
        from tokenizers import Tokenizer

        self._core = Tokenizer.from_str(core.to_str())
        self._core.no_truncation()
        self._core.no_padding()
        self.window = window
        self.pad_id = pad_id
        self.uses_token_types = uses_token_types
        self._specials = specials
        self._side = truncation_side
        self._hyps: LRU[str, Any] = LRU(HYPOTHESIS_CACHE_ENTRIES)

    @classmethod
    def from_pretrained(
        cls, source: str, revision: str | None, max_length: int | None, max_positions: int | None
    ) -> PairTokenizer:
        """The tokenizer of the model in `source`, as `AutoTokenizer` (so the pipeline) loads it."""
        tokenizer = load_hf_tokenizer(source, revision)
        if not getattr(tokenizer, "is_fast", False):
            raise ModelLoadError(
                f"the tokenizer of {source} has no fast (tokenizers) version; zsc needs one"
            )
        window = pair_window(source, tokenizer.model_max_length, max_positions, max_length)
        specials = tokenizer.num_special_tokens_to_add(pair=True)
        if window <= specials + 1:
            raise ModelLoadError(
                f"the window of {source} is {window} tokens, too few for a pair's {specials} "
                "special tokens and any text; raise max_length"
            )
        pad_id = tokenizer.pad_token_id
        if pad_id is None:
            pad_id = tokenizer.eos_token_id or 0
        return cls(
            tokenizer.backend_tokenizer,
            window=window,
            specials=specials,
            truncation_side=getattr(tokenizer, "truncation_side", "right"),
            pad_id=int(pad_id),
            uses_token_types="token_type_ids" in tokenizer.model_input_names,
        )

    def hypotheses(self, hyps: Sequence[str]) -> list[Any]:
        """Encodings of each hypothesis, from the LRU when seen before."""
        distinct = list(dict.fromkeys(hyps))
        found = dict(zip(distinct, self._hyps.get_many(distinct)))
        missing = [h for h, encoding in found.items() if encoding is None]
        if missing:
            encoded = self._core.encode_batch(missing, add_special_tokens=False)
            self._hyps.put_many(zip(missing, encoded))
            found.update(zip(missing, encoded))
        return [found[h] for h in hyps]

    def check_fit(self, hyps: Sequence[str]) -> None:
        """Raise the ClientError a pair would raise if a hypothesis leaves the text no room.

        Jobs call this at submission, so the mistake is a 4xx then instead of a failed job."""
        for hyp, encoding in zip(hyps, self.hypotheses(hyps)):
            if self.window - len(encoding) - self._specials <= 0:
                raise hypothesis_too_long(
                    self.window, f"{hyp[:60]!r} alone leaves no room for the text"
                )

    def encode(self, texts: Sequence[str], hyp_sets: Sequence[Sequence[str]]) -> EncodedRequest:
        """Pairs of each text with each of its hypotheses (`hyp_sets[i]` for `texts[i]`)."""
        all_hyps = list(dict.fromkeys(h for hyps in hyp_sets for h in hyps))
        by_hyp = dict(zip(all_hyps, self.hypotheses(all_hyps)))
        # Room left for the text beside each hypothesis; len(encoding) is its token count.
        budget = {h: self.window - len(enc) - self._specials for h, enc in by_hyp.items()}
        distinct = list(dict.fromkeys(texts))
        by_text = dict(zip(distinct, self._core.encode_batch(distinct, add_special_tokens=False)))
        pairs: list[Pair] = []
        truncated: list[int] = []
        # One premise per (text, budget): hypotheses of equal length share the cut copy.
        cut: dict[tuple[str, int], Any] = {}
        for index, (text, hyps) in enumerate(zip(texts, hyp_sets)):
            premise = by_text[text]
            was_cut = False
            for hyp in hyps:
                room, first = budget[hyp], premise
                if len(premise) > room:
                    if room <= 0:
                        raise hypothesis_too_long(
                            self.window, "the hypothesis alone leaves no room for the text"
                        )
                    cached = cut.get((text, room))
                    if cached is None:
                        cached = copy.deepcopy(premise)
                        cached.truncate(room, direction=self._side)
                        cut[(text, room)] = cached
                    first = cached
                    was_cut = True
                pair = self._core.post_process(first, by_hyp[hyp], add_special_tokens=True)
                types = tuple(pair.type_ids) if self.uses_token_types else None
                pairs.append((tuple(pair.ids), types))
            if was_cut:
                truncated.append(index)
        return EncodedRequest(pairs=pairs, truncated=truncated)

    def rooms(self, hyps: Sequence[str]) -> list[int]:
        """Tokens left for the text beside each hypothesis (<= 0: none)."""
        return [self.window - len(enc) - self._specials for enc in self.hypotheses(hyps)]

    def encode_texts(self, texts: Sequence[str]) -> list[Any]:
        """Each text's encoding alone (no special tokens), with offsets and word ids."""
        return list(self._core.encode_batch(list(texts), add_special_tokens=False))

    @property
    def truncation_side(self) -> str:
        return self._side
