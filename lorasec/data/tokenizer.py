"""Tokenisation through the ``tokenizers`` package: word level for the synthetic language, WordPiece for files.

Every sequence is ``[CLS] tokens...`` padded with ``[PAD]`` (id 0) or truncated to a fixed length, so jitted
steps see one shape.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
from tokenizers.models import WordLevel, WordPiece

SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


class TextEncoder:
    """Texts -> (token ids int32 (N, L), mask bool (N, L)) with a fixed length L."""

    def __init__(self, tokenizer: Tokenizer, seq_len: int):
        self.tokenizer = tokenizer
        self.seq_len = seq_len
        self.pad_id = tokenizer.token_to_id("[PAD]")
        self.mask_id = tokenizer.token_to_id("[MASK]")
        self.cls_id = tokenizer.token_to_id("[CLS]")
        if None in (self.pad_id, self.cls_id):
            raise ValueError("tokenizer vocabulary lacks [PAD] or [CLS]")
        tokenizer.enable_truncation(seq_len)
        tokenizer.enable_padding(pad_id=self.pad_id, pad_token="[PAD]", length=seq_len)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    @property
    def special_ids(self) -> np.ndarray:
        ids = [self.tokenizer.token_to_id(t) for t in SPECIALS]
        return np.asarray([i for i in ids if i is not None], np.int32)

    def encode(self, texts) -> tuple[np.ndarray, np.ndarray]:
        encodings = self.tokenizer.encode_batch(list(texts))
        ids = np.asarray([e.ids for e in encodings], np.int32).reshape(len(encodings), self.seq_len)
        mask = np.asarray([e.attention_mask for e in encodings], bool).reshape(ids.shape)
        return ids, mask

    def to_json(self) -> str:
        return self.tokenizer.to_str()

    @classmethod
    def from_json(cls, text: str, seq_len: int) -> TextEncoder:
        tokenizer = Tokenizer.from_str(text)
        tokenizer.no_padding()
        tokenizer.no_truncation()
        return cls(tokenizer, seq_len)


def _cls_template(tokenizer: Tokenizer) -> None:
    cls_id = tokenizer.token_to_id("[CLS]")
    tokenizer.post_processor = processors.TemplateProcessing(single="[CLS] $A", special_tokens=[("[CLS]", cls_id)])


def word_level(words, seq_len: int) -> TextEncoder:
    """Lower-cased word-level tokenizer over ``words`` (specials first; unknown words map to [UNK])."""
    vocab = {token: i for i, token in enumerate(SPECIALS)}
    for word in words:
        vocab.setdefault(word.lower(), len(vocab))
    tokenizer = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    _cls_template(tokenizer)
    return TextEncoder(tokenizer, seq_len)


def wordpiece(vocab_file: str | Path, seq_len: int) -> TextEncoder:
    """BERT WordPiece (uncased) from a ``vocab.txt``, or any tokenizer from a ``tokenizer.json``."""
    path = Path(vocab_file)
    if path.suffix == ".json":
        return TextEncoder.from_json(path.read_text(), seq_len)
    tokenizer = Tokenizer(WordPiece.from_file(str(path), unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    _cls_template(tokenizer)
    return TextEncoder(tokenizer, seq_len)
