"""The configuration schema: typed, frozen dataclasses and their checks of values alone.

``validate()`` reads no file and probes nothing: whether a config's paths exist and its arrays fit this machine is
:mod:`lorasec.config.environment`'s separate step, taken where work starts. A failed check raises
:class:`ConfigError` with one line naming the field, the bad value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorasec.config import grid
from lorasec.core.errors import ConfigError

ATTACKS = ("none", "label_flip", "badnets", "prefix", "sentence", "multi_trigger")
TRIGGER_ATTACKS = ("badnets", "prefix", "sentence", "multi_trigger")
ADAPTERS = ("full", "lora")
SCHEDULES = ("constant", "warmup_linear", "warmup_cosine")
LORA_INITS = ("kaiming_uniform", "gaussian", "pissa")
SELECTIONS = ("count", "bernoulli")
MODEL_KINDS = ("transformer", "mlp")
POOLINGS = ("mean", "cls")
COMPUTE_DTYPES = ("float32", "bfloat16")
REAL_DATA = {"rotten-tomatoes": 2, "bbc-news": 5, "sms-spam": 2}  # pinned registry sets -> number of classes
DATA_SOURCES = ("synthetic", "file", *REAL_DATA)
TRAIN_PARTS = ("train", "held-out")  # a real set's split: its training part, or what it holds out of train and test
PRETRAINED_MODELS = ("minilm-l6",)  # pinned registry models (lorasec.data.fetch.PINS)
HF_FILES = ("config.json", "model.safetensors")  # a BERT directory in Hugging Face's layout (weights)
HF_TOKENIZER = "tokenizer.json"  # and its tokenizer: needed to encode text, not to build the model
SEED_LIMIT = 2**32  # seeds are JAX keys' 32-bit seeds: 0 <= seed < 2**32


def fail(name: str, value: Any, allowed: str) -> None:
    raise ConfigError(f"{name} = {value!r}: {allowed}")


def one_of(name: str, value: str, options: tuple[str, ...]) -> None:
    if value not in options:
        fail(name, value, "must be one of " + ", ".join(options))


def at_least(name: str, value: float, low: float) -> None:
    if value < low:
        fail(name, value, f"must be >= {low}")


def positive(name: str, value: float) -> None:
    if not value > 0:
        fail(name, value, "must be > 0")


def rate(name: str, value: float, *, upper_open: bool = False) -> None:
    if not (0.0 <= value < 1.0 if upper_open else 0.0 <= value <= 1.0):
        fail(name, value, "must lie in [0, 1)" if upper_open else "must lie in [0, 1]")


def seed(name: str, value: int) -> None:
    """A run seed: JAX draws from ``key(seed)`` with a 32-bit seed, so larger ones would repeat smaller ones."""
    if not 0 <= value < SEED_LIMIT:
        fail(name, value, "must lie in [0, 2**32): JAX's keys take a 32-bit seed, so larger seeds would repeat "
                          "smaller ones")


# Fields only the synthetic generator reads: they do not decide a run on a real or file data set.
SYNTHETIC_ONLY = ("num_test", "cue_words_per_class", "cues_per_example", "cue_strength", "distractor_cues", "min_len",
                  "max_len", "label_noise")


@dataclass(frozen=True)
class DataConfig:
    """The task. ``synthetic`` draws a topic-classification corpus from ``seed``; ``file`` reads CSV/JSONL;
    ``rotten-tomatoes``, ``bbc-news``, ``sms-spam`` are real sets (:mod:`lorasec.data.datasets`), fetched once or read
    from ``data_dir``, split by ``seed`` into train / validation / test, with optional caps for CPU runs;
    ``train_part = "held-out"`` trains on the texts that split leaves out of training and test (the validation part
    and what ``max_train`` cuts): paper 2's proxy set, disjoint from the downstream run's."""

    source: str = "synthetic"
    """Where the task comes from: `synthetic` (drawn from `seed`), `file` (CSV/JSONL) or a pinned real set:
    rotten-tomatoes, bbc-news, sms-spam."""
    seed: int = 0
    """Draws the synthetic corpus, or splits a real set into train / validation / test. >= 0."""
    num_classes: int = 2
    """Number of labels; a real set fixes it (2, 5, 2). >= 2."""
    num_train: int = 2000
    """Synthetic training sentences. >= 1."""
    num_test: int = 1000
    """Synthetic test sentences (synthetic only). >= 1."""
    vocab_size: int = 400
    """Neutral filler words of the synthetic language. >= 1."""
    cue_words_per_class: int = 12
    """Cue words each topic owns (synthetic only). >= 1."""
    cues_per_example: int = 2
    """Cue words per sentence (synthetic only). >= 1."""
    cue_strength: float = 0.9
    """Probability that a cue word comes from the sentence's own topic (synthetic only); 0.9 gives about 90% clean
    accuracy, 1.0 saturates at 100%. In [0, 1]."""
    distractor_cues: int = 0
    """Cue words of uniformly drawn topics per sentence, independent of the label (synthetic only). >= 0."""
    min_len: int = 8
    """Shortest synthetic sentence, in words; >= cues_per_example + distractor_cues."""
    max_len: int = 24
    """Longest synthetic sentence, in words; >= min_len, and seq_len must be >= max_len + 1."""
    label_noise: float = 0.0
    """Fraction of synthetic labels replaced by a uniformly drawn other label. In [0, 1)."""
    seq_len: int = 32
    """Tokens per sentence, [CLS] included; longer texts are truncated (triggers are placed to survive it). >= 2."""
    train_file: str = ""
    """Training CSV or JSONL (source = 'file'; required then)."""
    test_file: str = ""
    """Test CSV or JSONL (source = 'file'; required then)."""
    text_field: str = "text"
    """Column or key holding the text (source = 'file')."""
    label_field: str = "label"
    """Column or key holding the integer label (source = 'file')."""
    vocab_file: str = ""
    """A WordPiece vocab.txt or tokenizer.json to tokenise a data file with; empty: a word-level vocabulary built from
    the training file."""
    data_dir: str = ""
    """Read a real set from this directory instead of the registry cache (the layout `lorasec fetch` writes)."""
    validation_fraction: float = 0.1
    """Share of a real set held out as validation (real sets only). In [0, 1)."""
    test_fraction: float = 0.2
    """Share of a real set used as test (real sets only); > 0 and validation_fraction + test_fraction < 1."""
    max_train: int = 0
    """Cap on a real set's training texts, for CPU runs; 0: no cap. >= 0."""
    max_test: int = 0
    """Cap on a real set's test texts; 0: no cap. >= 0."""
    train_part: str = "train"
    """Which texts of a real set to train on: `train`, or `held-out` (what the split leaves out of training and test:
    paper 2's proxy set)."""

    def validate(self, p: str = "data") -> None:
        one_of(f"{p}.source", self.source, DATA_SOURCES)
        one_of(f"{p}.train_part", self.train_part, TRAIN_PARTS)
        if self.train_part != "train" and self.source not in REAL_DATA:
            fail(f"{p}.train_part", self.train_part, f"needs a real set ({', '.join(REAL_DATA)}), whose split "
                                                      f"has a held-out part; use 'train' with data.source = "
                                                      f"{self.source!r}")
        at_least(f"{p}.seed", self.seed, 0)
        at_least(f"{p}.num_classes", self.num_classes, 2)
        at_least(f"{p}.seq_len", self.seq_len, 2)
        if self.source == "synthetic":
            at_least(f"{p}.num_train", self.num_train, 1)
            at_least(f"{p}.num_test", self.num_test, 1)
            at_least(f"{p}.vocab_size", self.vocab_size, 1)
            at_least(f"{p}.cue_words_per_class", self.cue_words_per_class, 1)
            at_least(f"{p}.cues_per_example", self.cues_per_example, 1)
            rate(f"{p}.cue_strength", self.cue_strength)
            at_least(f"{p}.distractor_cues", self.distractor_cues, 0)
            at_least(f"{p}.min_len", self.min_len, self.cues_per_example + self.distractor_cues)
            if self.max_len < self.min_len:
                fail(f"{p}.max_len", self.max_len, f"must be >= data.min_len = {self.min_len}")
            rate(f"{p}.label_noise", self.label_noise, upper_open=True)
        elif self.source in REAL_DATA:
            if self.num_classes != REAL_DATA[self.source]:
                fail(f"{p}.num_classes", self.num_classes, f"{self.source} has {REAL_DATA[self.source]} classes")
            rate(f"{p}.validation_fraction", self.validation_fraction, upper_open=True)
            rate(f"{p}.test_fraction", self.test_fraction, upper_open=True)
            if not (self.test_fraction > 0 and self.validation_fraction + self.test_fraction < 1):
                fail(f"{p}.test_fraction", self.test_fraction,
                     "must be > 0 and leave room for training (validation_fraction + test_fraction < 1)")
            at_least(f"{p}.max_train", self.max_train, 0)
            at_least(f"{p}.max_test", self.max_test, 0)
        else:
            for name in ("train_file", "test_file"):
                value = getattr(self, name)
                if not value:
                    fail(f"{p}.{name}", value, "is required when data.source = 'file' (a CSV or JSONL path)")
                if Path(value).suffix.lower() not in (".csv", ".jsonl", ".json"):
                    fail(f"{p}.{name}", value, "must end in .csv or .jsonl")


@dataclass(frozen=True)
class AttackConfig:
    """A training-time attack in OpenBackdoor's vocabulary; ``triggers`` empty means the attack's default."""

    kind: str = "none"
    """The attack: none, label_flip (untargeted, paper 1's UPA), badnets (rare words), prefix, sentence (an inserted
    sentence) or multi_trigger."""
    poison_rate: float = 0.05
    """Fraction of the training set poisoned. In [0, 1]."""
    target_label: int = 1
    """The label triggered inputs are relabelled to (trigger attacks); < data.num_classes. >= 0."""
    label_consistent: bool = False
    """Trigger attacks: poison only target-label samples and keep their labels (clean-label), instead of relabelling
    others."""
    selection: str = "count"
    """`count`: exactly round(rate·N) samples are poisoned; `bernoulli`: each independently with probability rate."""
    triggers: tuple[str, ...] = ()
    """Trigger phrases to use instead of the attack's defaults; no empty strings."""
    num_trigger_words: int = 1
    """Rare words BadNets inserts per text. >= 1."""

    def validate(self, p: str = "attack") -> None:
        one_of(f"{p}.kind", self.kind, ATTACKS)
        rate(f"{p}.poison_rate", self.poison_rate)
        at_least(f"{p}.target_label", self.target_label, 0)
        one_of(f"{p}.selection", self.selection, SELECTIONS)
        at_least(f"{p}.num_trigger_words", self.num_trigger_words, 1)
        if any(not t.strip() for t in self.triggers):
            fail(f"{p}.triggers", list(self.triggers), "must not contain empty strings")
        if self.kind == "label_flip" and self.label_consistent:
            fail(f"{p}.label_consistent", True, "only applies to trigger attacks, not label_flip")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture; with ``pretrained`` set (a lorasec checkpoint, a BERT directory, or ``minilm-l6``, fetched
    from the registry once), the sizes are read from that checkpoint instead. ``init_from`` starts
    from a finished full fine-tuning run's whole classifier (encoder and head), e.g. a backdoored model."""

    kind: str = "transformer"
    """`transformer` (a BERT-style encoder) or `mlp` (mean-pooled embeddings through an MLP)."""
    pretrained: str = ""
    """Start from a lorasec pretrain checkpoint, a BERT directory in Hugging Face's layout, or `minilm-l6` (fetched once
    from the registry); the sizes then come from it."""
    init_from: str = ""
    """Start from a finished full fine-tuning run's whole classifier (encoder and head), e.g. a backdoored model; not
    with pretrained."""
    d_model: int = 64
    """Hidden width. >= 1, divisible by num_heads."""
    num_layers: int = 2
    """Encoder layers. >= 1."""
    num_heads: int = 4
    """Attention heads; must divide d_model."""
    d_ff: int = 128
    """Feed-forward width. >= 1."""
    dropout: float = 0.1
    """Dropout on hidden states (BERT's hidden_dropout_prob). In [0, 1)."""
    attention_dropout: float = 0.0
    """Dropout on attention probabilities (BERT's attention_probs_dropout_prob); 0 keeps them exact. In [0, 1)."""
    head_dropout: float = -1.0
    """Dropout on the pooled features before the head; -1: model.dropout; 0: none, as BERT's encoder alone. In [0, 1) or
    -1."""
    pooling: str = "mean"
    """`mean` over tokens or the `cls` token (mlp models: mean only)."""
    mlp_hidden: tuple[int, ...] = (128,)
    """Hidden widths of the `mlp` model. Each >= 1."""

    def validate(self, p: str = "model") -> None:
        one_of(f"{p}.kind", self.kind, MODEL_KINDS)
        one_of(f"{p}.pooling", self.pooling, POOLINGS)
        rate(f"{p}.dropout", self.dropout, upper_open=True)
        rate(f"{p}.attention_dropout", self.attention_dropout, upper_open=True)
        if self.head_dropout != -1.0 and not 0.0 <= self.head_dropout < 1.0:
            fail(f"{p}.head_dropout", self.head_dropout, "must lie in [0, 1), or be -1 for model.dropout")
        if self.init_from and self.pretrained:
            fail(f"{p}.init_from", self.init_from, "set either model.pretrained or model.init_from, not both")
        at_least(f"{p}.d_model", self.d_model, 1)
        at_least(f"{p}.num_layers", self.num_layers, 1)
        at_least(f"{p}.num_heads", self.num_heads, 1)
        at_least(f"{p}.d_ff", self.d_ff, 1)
        if self.kind == "transformer" and self.d_model % self.num_heads:
            fail(f"{p}.num_heads", self.num_heads, f"must divide model.d_model = {self.d_model}")
        if any(h < 1 for h in self.mlp_hidden):
            fail(f"{p}.mlp_hidden", list(self.mlp_hidden), "widths must be >= 1")


@dataclass(frozen=True)
class AdapterConfig:
    """Full fine-tuning or LoRA ``W = W0 + s·B·A`` with s = alpha/r (or alpha/sqrt(r) with rsLoRA).

    ``init = 'pissa'`` starts the factors at the top-r singular part of W0 (PiSSA). ``dora`` makes each adapter DoRA
    (magnitude and direction). RoRA's parts (Luong & Chen 2026), each switchable: ``rora_cl`` dropout p on the
    frozen path, ``rora_tr`` the weight λ of ``‖U_kᵀB‖²_F + ‖A V_k‖²_F`` with ``rora_tr_k`` = k, ``rora_pt_layers``
    = how many top encoder layers get the post-training rescale (0 = off)."""

    method: str = "lora"
    """`full` fine-tuning or `lora` (W = W0 + s·B·A)."""
    rank: int = 8
    """LoRA rank r. >= 1."""
    alpha: float = 16.0
    """LoRA α: the scale s = α/r (α/√r with rslora). > 0."""
    rslora: bool = False
    """Scale by α/√r (rsLoRA) instead of α/r."""
    init: str = "kaiming_uniform"
    """How A starts: `kaiming_uniform` (peft's default), `gaussian`, or `pissa` (both factors from W0's top-r singular
    part)."""
    init_scale: float = 1.0 / 3.0
    """Var(A) = init_scale / fan_in (paper 1's c/n); peft's default kaiming-uniform is 1/3. > 0."""
    freeze_a: bool = False
    """Train B only, A fixed at its draw."""
    dropout: float = 0.0
    """LoRA dropout on the adapter's input. In [0, 1)."""
    targets: tuple[str, ...] = ("all-linear",)
    """Linear layers to adapt: peft-style name patterns, `re:REGEX`, or `all-linear`; at least one for lora."""
    modules_to_save: tuple[str, ...] = ("head",)
    """Layers trained in full beside the adapters (the new classification head), as peft's modules_to_save."""
    dora: bool = False
    """Make each adapter DoRA (a trained magnitude and a LoRA direction); lora only, not with pissa."""
    rora_cl: float = 0.0
    """RoRA Cl (clean-strengthened regularisation, paper 2): dropout p on the frozen path; 0 = off. In [0, 1)."""
    rora_tr: float = 0.0
    """RoRA Tr: weight λ of ‖U_kᵀB‖²_F + ‖A V_k‖²_F against W0's top-k singular directions; 0 = off. >= 0."""
    rora_tr_k: int = 32
    """RoRA Tr: k, the number of W0's singular directions penalised; at most the narrowest adapted layer. >= 1."""
    rora_pt_layers: int = 0
    """RoRA Pt: how many top encoder layers get the post-training rescale; 0 = off; at most the encoder's layers."""

    def validate(self, p: str = "adapter") -> None:
        one_of(f"{p}.method", self.method, ADAPTERS)
        at_least(f"{p}.rank", self.rank, 1)
        positive(f"{p}.alpha", self.alpha)
        one_of(f"{p}.init", self.init, LORA_INITS)
        positive(f"{p}.init_scale", self.init_scale)
        rate(f"{p}.dropout", self.dropout, upper_open=True)
        if self.method == "lora" and not self.targets:
            fail(f"{p}.targets", [], "must name at least one layer pattern (or 'all-linear')")
        for field_name in ("targets", "modules_to_save"):
            for pattern in getattr(self, field_name):
                if pattern.startswith("re:"):
                    try:
                        re.compile(pattern[3:])
                    except re.error as err:
                        fail(f"{p}.{field_name}", pattern, f"not a valid regular expression ({err})")
        rate(f"{p}.rora_cl", self.rora_cl, upper_open=True)
        at_least(f"{p}.rora_tr", self.rora_tr, 0.0)
        at_least(f"{p}.rora_tr_k", self.rora_tr_k, 1)
        at_least(f"{p}.rora_pt_layers", self.rora_pt_layers, 0)
        if self.init == "pissa" and (self.dora or self.rora_tr or self.rora_pt_layers):
            fail(f"{p}.init", "pissa", "PiSSA moves the principal part of W_pre into the factors, so DoRA's "
                                      "magnitude, RoRA Tr's bases and Pt's σ_max(W_pre) lose their meaning; "
                                      "use init = 'kaiming_uniform' with those")
        if self.method == "full" and (self.rora_cl or self.rora_tr or self.rora_pt_layers or self.dora):
            fail(f"{p}.method", "full", "dora and the RoRA parts (rora_cl, rora_tr, rora_pt_layers) need "
                                        "method = 'lora'")

    @property
    def scaling(self) -> float:
        return self.alpha / (self.rank**0.5 if self.rslora else self.rank)

    @property
    def plain_lora(self) -> bool:
        """LoRA whose update is ``s·B A`` on top of W_pre (RoRA parts allowed): no DoRA rescale, no PiSSA split,
        so the trained update is linear in the scale s."""
        return self.method == "lora" and not self.dora and self.init != "pissa"


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation (optax AdamW), logging and checkpointing. ``steps_per_dispatch`` steps run in one call to the
    device (``lax.scan``), fewer where a log or checkpoint step falls; the host reads losses once per call."""

    steps: int = 300
    """Optimiser steps. >= 1."""
    batch_size: int = 32
    """Training examples per step; <= data.num_train on the synthetic task. >= 1."""
    lr: float = 1e-3
    """AdamW's peak learning rate. > 0."""
    schedule: str = "constant"
    """`constant`, `warmup_linear` or `warmup_cosine` (linear warm-up, then linear or cosine decay to 0)."""
    warmup_steps: int = 0
    """Steps of linear warm-up; <= steps (< steps with a decaying schedule). >= 0."""
    weight_decay: float = 0.01
    """AdamW's decoupled weight decay. >= 0."""
    grad_clip: float = 1.0
    """Global gradient-norm clip; 0 = none. >= 0."""
    log_every: int = 25
    """Steps between loss records (and progress updates). >= 1."""
    checkpoint_every: int = 100
    """Steps between checkpoints (a killed run resumes from the last). >= 1."""
    keep_checkpoints: int = 2
    """Checkpoints kept on disk. >= 1."""
    eval_batch_size: int = 256
    """Examples per evaluation batch (memory only; results do not depend on it). >= 1."""
    mask_prob: float = 0.15
    """Pretraining only: share of tokens masked for the masked-LM loss. In (0, 1)."""
    steps_per_dispatch: int = 25
    """Steps run in one call to the device (lax.scan), fewer where a log or checkpoint step falls. >= 1."""
    compute_dtype: str = "float32"
    """`float32`, or `bfloat16`: linear layers multiply in bfloat16 (as PyTorch's autocast); weights, gradients and
    AdamW stay float32."""

    def validate(self, p: str = "train") -> None:
        at_least(f"{p}.steps", self.steps, 1)
        at_least(f"{p}.batch_size", self.batch_size, 1)
        positive(f"{p}.lr", self.lr)
        one_of(f"{p}.schedule", self.schedule, SCHEDULES)
        at_least(f"{p}.warmup_steps", self.warmup_steps, 0)
        if self.warmup_steps > self.steps:
            fail(f"{p}.warmup_steps", self.warmup_steps, f"must be <= train.steps = {self.steps}")
        if self.schedule != "constant" and self.warmup_steps == self.steps:
            fail(f"{p}.warmup_steps", self.warmup_steps, "leaves no step for the decay; make it < train.steps")
        at_least(f"{p}.weight_decay", self.weight_decay, 0.0)
        at_least(f"{p}.grad_clip", self.grad_clip, 0.0)
        at_least(f"{p}.log_every", self.log_every, 1)
        at_least(f"{p}.checkpoint_every", self.checkpoint_every, 1)
        at_least(f"{p}.keep_checkpoints", self.keep_checkpoints, 1)
        at_least(f"{p}.eval_batch_size", self.eval_batch_size, 1)
        at_least(f"{p}.steps_per_dispatch", self.steps_per_dispatch, 1)
        one_of(f"{p}.compute_dtype", self.compute_dtype, COMPUTE_DTYPES)
        if not 0.0 < self.mask_prob < 1.0:
            fail(f"{p}.mask_prob", self.mask_prob, "must lie in (0, 1)")


@dataclass(frozen=True)
class RunConfig:
    """One fine-tuning run: ``lorasec train``."""

    seed: int = 0
    """The run's seed: adapter initialisation, dropout, batch order and poison choice. In [0, 2**32)."""
    data: DataConfig = field(default_factory=DataConfig)
    """The task."""
    attack: AttackConfig = field(default_factory=AttackConfig)
    """The training-time attack."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The architecture or pretrained checkpoint."""
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    """Full fine-tuning or LoRA and its variants."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Optimisation, logging and checkpointing."""

    def validate(self) -> RunConfig:
        seed("seed", self.seed)
        for section in ("data", "attack", "model", "adapter", "train"):
            getattr(self, section).validate(section)
        if self.attack.kind != "none" and self.attack.target_label >= self.data.num_classes:
            fail("attack.target_label", self.attack.target_label,
                 f"must be < data.num_classes = {self.data.num_classes}")
        if self.data.source == "synthetic":
            if self.train.batch_size > self.data.num_train:
                fail("train.batch_size", self.train.batch_size, f"must be <= data.num_train = {self.data.num_train}")
            # [CLS] + the longest sentence + a trigger must fit, or test-time triggers get truncated away.
            if self.data.seq_len - 1 - self.data.max_len < 0:
                fail("data.seq_len", self.data.seq_len,
                     f"must be >= data.max_len + 1 = {self.data.max_len + 1} (room for [CLS])")
        if self.model.kind == "mlp" and self.model.pooling == "cls":
            fail("model.pooling", "cls", "the MLP classifier averages its embeddings; use 'mean'")
        return self


@dataclass(frozen=True)
class PretrainConfig:
    """Masked-language-model pretraining on the synthetic corpus: ``lorasec pretrain``."""

    seed: int = 0
    """Seed of initialisation and masking. In [0, 2**32)."""
    data: DataConfig = field(default_factory=lambda: DataConfig(num_train=8000))
    """The synthetic corpus pretrained on (source must be synthetic)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The encoder to pretrain (a transformer; pretrained must be empty)."""
    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=1500, lr=1e-3, batch_size=64,
                                                                   schedule="warmup_cosine", warmup_steps=100,
                                                                   checkpoint_every=500))
    """The pretraining schedule."""

    def validate(self) -> PretrainConfig:
        seed("seed", self.seed)
        for section in ("data", "model", "train"):
            getattr(self, section).validate(section)
        if self.data.source != "synthetic":
            fail("data.source", self.data.source, "pretraining uses the synthetic corpus: 'synthetic'")
        if self.model.kind != "transformer":
            fail("model.kind", self.model.kind, "pretraining builds a 'transformer' encoder")
        if self.model.pretrained:
            fail("model.pretrained", self.model.pretrained, "must be empty when pretraining")
        return self


def seeds(name: str, values: tuple[int, ...]) -> None:
    """A list of run seeds: at least one, each a valid seed, none twice (a repeated seed is the same run)."""
    if not values:
        fail(name, [], "must list at least one seed")
    for value in values:
        seed(name, value)
    if len(set(values)) != len(values):
        fail(name, list(values), "lists a seed twice (the same seed is the same run)")


ATTACK_POINTS = grid.PointSyntax("attacks", ATTACKS, lambda kind: {} if kind == "none" else {"poison_rate": float},
                                 primary="poison_rate", example="'badnets@0.05' (or 'none')")
ARM_POINTS = grid.PointSyntax("arms", ADAPTERS, lambda method: {"lr": float}, primary="lr", example="'lora@1e-3'")


def parse_attack(text: str, target_label: int, name: str = "attacks") -> AttackConfig:
    """``'none'``, ``'label_flip@0.2'``, ``'badnets@0.05'`` (or ``'badnets[poison_rate=0.05]'``): an attack kind
    and its poison rate (:mod:`lorasec.config.grid`)."""
    kind, settings = grid.parse_point(text, ATTACK_POINTS, name=name)
    if kind != "none" and "poison_rate" not in settings:
        fail(name, text, f"needs a poison rate; write KIND@RATE, e.g. {ATTACK_POINTS.example}")
    attack = AttackConfig(kind=kind, poison_rate=settings.get("poison_rate", 0.0), target_label=target_label)
    attack.validate(name)
    return attack


def parse_arm(text: str, name: str = "arms") -> tuple[str, float]:
    """``'lora@1e-3'``: an adapter method and its learning rate."""
    method, settings = grid.parse_point(text, ARM_POINTS, name=name, required=("lr",))
    positive(f"{name} {text!r}: lr", settings["lr"])
    return method, settings["lr"]


@dataclass(frozen=True)
class StudyConfig:
    """A grid of fine-tuning runs from one base run: every attack × arm × seed (``lorasec study CONFIG``).

    ``base`` is a whole run config (data, model, adapter settings, training); each cell replaces its seed, attack,
    adapter method and learning rate. An empty ``base.model.pretrained`` on the synthetic task pretrains the
    encoder first (``pretrain_steps``)."""

    seeds: tuple[int, ...] = (0, 1, 2)
    """Seeds of every cell; at least one, none twice."""
    attacks: tuple[str, ...] = ("none", "label_flip@0.2", "badnets@0.05")
    """Attacks as KIND@RATE, e.g. 'badnets@0.05', or 'none'."""
    arms: tuple[str, ...] = ("full@1e-3", "full@1e-4", "lora@1e-3")
    """Fine-tuning arms as METHOD@LR, e.g. 'lora@1e-3', 'full@1e-4'."""
    target_label: int = 1
    """Target label of the trigger attacks; < base.data.num_classes."""
    pretrain_steps: int = 1500
    """Masked-LM steps of the encoder pretrained first when base.model.pretrained is empty (synthetic task). >= 1."""
    base: RunConfig = field(default_factory=RunConfig)
    """The run config every cell starts from (each cell sets its seed, attack, method and learning rate)."""

    def validate(self) -> StudyConfig:
        seeds("seeds", self.seeds)
        for what, items in (("attacks", self.attacks), ("arms", self.arms)):
            if not items:
                fail(what, [], "must list at least one entry")
        for text in self.attacks:
            parse_attack(text, self.target_label)
        for text in self.arms:
            parse_arm(text)
        at_least("pretrain_steps", self.pretrain_steps, 1)
        try:
            self.base.validate()
        except ConfigError as err:
            raise ConfigError(f"base.{err}") from None  # name the field as the file spells it
        if self.target_label >= self.base.data.num_classes:
            fail("target_label", self.target_label, f"must be < base.data.num_classes = {self.base.data.num_classes}")
        return self


DEFENCES = ("full", "lora", "dora", "pissa", "rora", "rora_cl", "rora_tr", "rora_pt", "dora_rora", "rora_cl_tr",
            "rora_cl_pt", "rora_tr_pt")
RORA_PARTS = {"cl": ("cl",), "tr": ("tr", "tr_k"), "pt": ("pt_layers",)}  # RoRAConfig fields each part reads
DEFENCE_RORA = {"rora": ("cl", "tr", "pt"), "dora_rora": ("cl", "tr", "pt"), "rora_cl": ("cl",), "rora_tr": ("tr",),
                "rora_pt": ("pt",), "rora_cl_tr": ("cl", "tr"), "rora_cl_pt": ("cl", "pt"),
                "rora_tr_pt": ("tr", "pt")}  # the RoRA parts each defence switches on (Table 4's ablation)


def defence_fields(name: str) -> tuple[str, ...]:
    """The [rora] fields defence ``name`` reads, e.g. ``("tr", "tr_k")`` for ``rora_tr``."""
    return tuple(f for part in DEFENCE_RORA.get(name, ()) for f in RORA_PARTS[part])


@dataclass(frozen=True)
class BackdoorConfig:
    """How the backdoored pretrained model is made (paper 2's threat model): full fine-tuning of the clean
    pretrained encoder on a poisoned proxy set of the same task (other draws, ``data_seed``). Refused below
    ``min_asr`` on the proxy test set. Paper 2 inserts the trigger into target-label samples with labels kept
    (``attack.label_consistent = true``); on the synthetic task, whose labels are carried by unambiguous cue words,
    that never teaches the trigger (ASR 0), so the default is dirty-label BadNets (relabelled to the target).
    On a real set the proxy is disjoint from the downstream data, as the paper's: the texts the downstream split
    holds out of its training and test parts (``data.train_part = "held-out"``; ``data_seed`` and ``num_train``
    apply to the synthetic task only), and the backdoor's ASR is measured on the downstream test set."""

    data_seed: int = 1
    """Seed of the synthetic proxy set the backdoor is planted with (other draws than the downstream set's). >= 0."""
    num_train: int = 2000
    """Synthetic proxy set size. >= 1."""
    attack: AttackConfig = field(default_factory=lambda: AttackConfig(kind="badnets", poison_rate=0.1))
    """The planted backdoor (a trigger attack)."""
    min_asr: float = 0.95
    """Refuse a backdoored model whose ASR on the proxy test set is below this. In [0, 1]."""
    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=600, lr=1e-3))
    """Full fine-tuning that plants the backdoor."""

    def validate(self, p: str = "backdoor") -> None:
        at_least(f"{p}.data_seed", self.data_seed, 0)
        at_least(f"{p}.num_train", self.num_train, 1)
        self.attack.validate(f"{p}.attack")
        one_of(f"{p}.attack.kind", self.attack.kind, TRIGGER_ATTACKS)
        rate(f"{p}.min_asr", self.min_asr)
        self.train.validate(f"{p}.train")


@dataclass(frozen=True)
class RoRAConfig:
    """The RoRA settings the ``rora*`` defences use (paper 2's defaults: p = 0.1, top 3 layers; λ from 1–20)."""

    cl: float = 0.1
    """Cl: dropout p on the frozen path (paper 2's default 0.1). In [0, 1)."""
    tr: float = 1.0
    """Tr: the penalty weight λ (paper 2 uses 1–20). >= 0."""
    tr_k: int = 32
    """Tr: k, W0's singular directions penalised; at most the narrowest adapted layer. >= 1."""
    pt_layers: int = 3
    """Pt: top encoder layers rescaled after training (paper 2: 3 of RoBERTa-large's 24); at most the encoder's layers.
    >= 1."""

    def validate(self, p: str = "rora") -> None:
        rate(f"{p}.cl", self.cl, upper_open=True)
        at_least(f"{p}.tr", self.tr, 0.0)
        at_least(f"{p}.tr_k", self.tr_k, 1)
        at_least(f"{p}.pt_layers", self.pt_layers, 1)


DEFENCE_POINTS = grid.PointSyntax(
    "defences", DEFENCES,
    lambda name: {f: (int if f in ("tr_k", "pt_layers") else float) for f in defence_fields(name)},
    example="'rora_cl[cl=0.3]' or 'rora_tr[tr=20, tr_k=8]'", fields_of=" of [rora]",
    settable="only the rora* defences take [field=value]")


def parse_defence(text: str, name: str = "defences") -> tuple[str, dict[str, float | int]]:
    """``'rora_cl'`` or ``'rora_tr[tr=20, tr_k=8]'``: a defence and the [rora] settings it overrides (a point of
    RoRA's grids, paper 2's Table 4; the syntax is :mod:`lorasec.config.grid`'s)."""
    return grid.parse_point(text, DEFENCE_POINTS, name=name)


@dataclass(frozen=True)
class PurifyConfig:
    """Weight poisoning then clean fine-tuning with each defence, over seeds: ``lorasec purify``.

    ``model.pretrained`` is the clean pretrained checkpoint (empty: pretrain the synthetic encoder for
    ``pretrain_steps``); ``adapter`` holds the LoRA settings every LoRA-family defence shares; ``train`` the clean
    fine-tuning, with full fine-tuning at ``full_lr`` (0 = ``train.lr``). LoRA dropout 0.1 as in paper 2. The
    synthetic task is at its default difficulty (clean accuracy about 90%), so a defence's cost in clean accuracy
    can show."""

    seeds: tuple[int, ...] = (0, 1, 2)
    """Seeds of the clean fine-tuning runs (each defence, and the never-poisoned control)."""
    defences: tuple[str, ...] = ("full", "lora", "dora", "pissa", "rora")
    """Defences, in report order: full, lora, dora, pissa, rora and its parts; rora* take [rora] overrides, e.g.
    'rora_tr[tr=20, tr_k=8]'."""
    data: DataConfig = field(default_factory=DataConfig)
    """The downstream task."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The clean pretrained model (empty pretrained: pretrain the synthetic encoder first); init_from must be empty."""
    pretrain_steps: int = 1500
    """Masked-LM steps when purify pretrains the synthetic encoder itself. >= 1."""
    backdoor: BackdoorConfig = field(default_factory=BackdoorConfig)
    """How the backdoored starting model is made."""
    adapter: AdapterConfig = field(default_factory=lambda: AdapterConfig(dropout=0.1))
    """Plain LoRA settings every LoRA-family defence shares (method lora; DoRA, PiSSA, RoRA come through defences)."""
    rora: RoRAConfig = field(default_factory=lambda: RoRAConfig(pt_layers=2))
    """RoRA's settings for the rora* defences; Pt on both layers of the default 2-layer encoder (paper 2: the top 3
    of RoBERTa-large's 24)."""
    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=600, lr=1e-3))
    """Clean fine-tuning of each defence."""
    full_lr: float = 0.0
    """Full fine-tuning's learning rate; 0: train.lr. >= 0."""

    def validate(self) -> PurifyConfig:
        seeds("seeds", self.seeds)
        if not self.defences:
            fail("defences", [], "must name at least one of " + ", ".join(DEFENCES))
        for section in ("data", "model", "backdoor", "adapter", "rora", "train"):
            getattr(self, section).validate(section)
        for text in self.defences:
            _, overrides = parse_defence(text)
            if overrides:
                dataclasses.replace(self.rora, **overrides).validate(f"defences {text!r}: rora")
        at_least("pretrain_steps", self.pretrain_steps, 1)
        at_least("full_lr", self.full_lr, 0.0)
        if self.model.init_from:
            fail("model.init_from", self.model.init_from, "purify makes the starting model itself; leave it empty")
        if not self.model.pretrained and (self.data.source != "synthetic" or self.model.kind != "transformer"):
            fail("model.pretrained", "", "is required unless data.source = 'synthetic' and model.kind = "
                                         "'transformer' (then purify pretrains one)")
        if self.adapter.method != "lora" or self.adapter.dora or self.adapter.init == "pissa" or any(
                (self.adapter.rora_cl, self.adapter.rora_tr, self.adapter.rora_pt_layers)):
            fail("adapter", "…", "holds the plain LoRA settings shared by the defences (method = 'lora'); "
                                 "choose DoRA, PiSSA and RoRA through `defences` and the [rora] section")
        if self.data.train_part != "train":
            fail("data.train_part", self.data.train_part, "purify fine-tunes on the downstream training part; "
                                                          "the backdoor's proxy is chosen for you (leave 'train')")
        if self.backdoor.attack.target_label >= self.data.num_classes:
            fail("backdoor.attack.target_label", self.backdoor.attack.target_label,
                 f"must be < data.num_classes = {self.data.num_classes}")
        return self

    def defence(self, text: str) -> tuple[str, RoRAConfig]:
        """A defence as ``defences`` spells it -> (its name, the RoRA settings it runs with: [rora] under its
        overrides)."""
        name, overrides = parse_defence(text)
        return name, dataclasses.replace(self.rora, **overrides)


PREDICTORS = ("linearised_attack_success_rate", "linearised_clean_accuracy", "ntk_attack_success_rate",
              "ntk_margin_push", "ntk_clean_accuracy", "sign_attack_success_rate", "sign_margin_push",
              "sign_clean_accuracy", "m_prime", "m_prime_normalised", "kernel_trace", "effective_rank",
              "information_bits", "kernel_target_alignment", "trigger_target_alignment", "learning_rate_sum",
              "poison_rate")
OUTCOMES = ("attack_success_rate", "clean_accuracy", "triggered_accuracy")


@dataclass(frozen=True)
class PredictionClaim:
    """A claim that a predictor ranks an outcome across the sweep, with its thresholds written before the run."""

    predictor: str = ""
    """One of lorasec's predictors: linearised_attack_success_rate, ntk_margin_push, sign_margin_push, m_prime,
    trigger_target_alignment, ... (``lorasec.config.PREDICTORS``)."""
    outcome: str = "attack_success_rate"
    """The measured outcome it should rank: attack_success_rate, clean_accuracy or triggered_accuracy."""
    spearman_at_least: float = 0.8
    """The claim holds when Spearman's rho over the cells is at least this ..."""
    lower_at_least: float = 0.6
    """... and its bootstrap 95% interval's lower end at least this."""
    statement: str = ""
    """The claim in words."""

    def validate(self, name: str) -> PredictionClaim:
        one_of(f"{name}.predictor", self.predictor, PREDICTORS)
        one_of(f"{name}.outcome", self.outcome, OUTCOMES)
        for key in ("spearman_at_least", "lower_at_least"):
            value = getattr(self, key)
            if not -1.0 <= value <= 1.0:
                fail(f"{name}.{key}", value, "must lie in [-1, 1] (a rank correlation)")
        if self.lower_at_least > self.spearman_at_least:
            fail(f"{name}.lower_at_least", self.lower_at_least, "must not exceed spearman_at_least")
        return self


@dataclass(frozen=True)
class PredictConfig:
    """``lorasec predict SPEC``: a sweep, the predictors computed before training for each of its runs, how they are
    scored against what the runs measured, and the claims with their thresholds."""

    sweep: str = ""
    """The sweep spec (relative to this file) whose runs are predicted and trained."""
    probe_size: int = 64
    """Test sentences per kind in the kernel probe (clean, triggered, poisoned). >= 2."""
    gradient_sample: int = 256
    """Clean training examples sampled for the starting gradient (every poisoned one is used). >= 1."""
    predictor_seeds: tuple[int, ...] = ()
    """Seeds whose runs get the predictors computed before training; [] for every seed (each predictor is scored on
    its mean over the cell's seeds that have it); [0] predicts each cell from one seed, at a fraction of the cost
    (each model's compilation is paid either way)."""
    linearised_seeds: tuple[int, ...] = (0,)
    """Seeds whose runs are also trained linearised (each as long as a real run, three times the work); [] for none."""
    drift_seeds: tuple[int, ...] = (0,)
    """Seeds whose runs are replayed to measure the kernel's drift; [] for none."""
    drift_every: int = 100
    """Steps between the drift's kernel snapshots. >= 1."""
    outcomes: tuple[str, ...] = ("attack_success_rate", "clean_accuracy")
    """The measured outcomes every predictor is scored against."""
    bootstrap_draws: int = 2000
    """Bootstrap resamples of the rank correlations' intervals. >= 100."""
    claims: tuple[PredictionClaim, ...] = ()
    """The claims decided on the scores (thresholds fixed before the run)."""

    def validate(self) -> PredictConfig:
        if not self.sweep:
            fail("sweep", "", "name the sweep spec whose runs are predicted (a path relative to this file)")
        at_least("probe_size", self.probe_size, 2)
        at_least("gradient_sample", self.gradient_sample, 1)
        at_least("drift_every", self.drift_every, 1)
        at_least("bootstrap_draws", self.bootstrap_draws, 100)
        for name in ("predictor_seeds", "linearised_seeds", "drift_seeds"):
            for value in getattr(self, name):
                seed(name, value)
        if not self.outcomes:
            fail("outcomes", [], "name at least one of " + ", ".join(OUTCOMES))
        for i, outcome in enumerate(self.outcomes):
            one_of(f"outcomes[{i}]", outcome, OUTCOMES)
        for i, item in enumerate(self.claims):
            item.validate(f"claims[{i}]")
        return self
