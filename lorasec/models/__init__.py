"""Model architectures and how a config becomes one.

An :class:`Architecture` is everything needed to rebuild a network with the same shapes: it is written to a
pretrained checkpoint's ``model.json`` and read back when fine-tuning from it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from flax import nnx

from lorasec.config import ConfigError, ModelConfig

CLASSIFIER_LAYERS = ("head", "pooler")  # the linear layers a classifier adds on top of its encoder


@dataclass(frozen=True)
class Architecture:
    """Everything needed to rebuild a network with the same shapes (module docstring).

    Attributes:
        kind: ``"transformer"`` or ``"mlp"`` (a bag of embeddings, ReLU hidden layers, a head).
        vocab_size: V, the token embedding's rows.
        max_positions: the position embedding's rows, the longest sequence (transformer).
        d_model: the embedding width, and the transformer's hidden width.
        num_layers: encoder layers (transformer).
        num_heads: attention heads, dividing ``d_model`` (transformer).
        d_ff: the feed-forward width (transformer).
        dropout: the transformer's dropout rate (embeddings and encoder layers); the MLP has none.
        pooling: ``"mean"`` (masked mean) or ``"cls"`` (BERT's tanh pooler on [CLS]) (transformer).
        mlp_hidden: the MLP's hidden widths.
        type_vocab_size: segment embedding rows (BERT imports); 0 for none.
        attention_dropout: dropout on the attention probabilities.
        head_dropout: dropout on the pooled features before the head; -1 for ``dropout``.
    """

    kind: str
    vocab_size: int
    max_positions: int
    d_model: int
    num_layers: int
    num_heads: int
    d_ff: int
    dropout: float
    pooling: str
    mlp_hidden: tuple[int, ...]
    type_vocab_size: int = 0  # BERT's segment embeddings (imported models); inputs are one segment, type 0
    attention_dropout: float = 0.0  # on the attention probabilities, as BERT's attention_probs_dropout_prob
    head_dropout: float = -1.0  # on the pooled features before the head; -1: the same as dropout

    @property
    def pooled_dropout(self) -> float:
        return self.dropout if self.head_dropout == -1.0 else self.head_dropout

    @classmethod
    def from_config(cls, cfg: ModelConfig, vocab_size: int, max_positions: int) -> Architecture:
        return cls(cfg.kind, vocab_size, max_positions, cfg.d_model, cfg.num_layers, cfg.num_heads, cfg.d_ff,
                   cfg.dropout, cfg.pooling, tuple(cfg.mlp_hidden), attention_dropout=cfg.attention_dropout,
                   head_dropout=cfg.head_dropout)

    @classmethod
    def from_dict(cls, raw: dict) -> Architecture:
        names = {f.name for f in dataclasses.fields(cls)}
        raw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in raw.items() if k in names}
        return cls(**raw)

    def with_(self, **changes) -> Architecture:
        return dataclasses.replace(self, **changes)


def build_classifier(arch: Architecture, num_classes: int, *, rngs: nnx.Rngs) -> nnx.Module:
    """A freshly initialised classifier of ``arch``: a ``TransformerClassifier`` or an ``MLPClassifier``.

    Args:
        arch: the architecture (``arch.kind`` picks the class).
        num_classes: C, the head's outputs.
        rngs: NNX rngs for the initial parameters (float32; float64 under x64).
    Returns:
        An NNX module ``model(tokens, mask, rngs=None) -> logits`` from int32 (N, L) token ids and a bool (N, L)
        mask to float (N, C) logits; dropout only when ``rngs`` is given.
    """
    from lorasec.models.mlp import MLPClassifier
    from lorasec.models.transformer import TransformerClassifier

    if arch.kind == "transformer":
        return TransformerClassifier(arch, num_classes, rngs=rngs)
    if arch.kind == "mlp":
        return MLPClassifier(arch, num_classes, rngs=rngs)
    raise ConfigError(f"model.kind = {arch.kind!r}: must be one of transformer, mlp")
