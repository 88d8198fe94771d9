"""Where a run's classifier starts, decided once: from scratch, from a pretrained encoder, or from a finished run.

:func:`resolve` reads a run config's ``model.pretrained`` / ``model.init_from`` (and, from scratch, the data it
learns a vocabulary from) and returns a :class:`Start`: the architecture, the tokenizer and where the initial
weights come from. Everything after it (poisoning, building the model, saving the run directory, reloading it)
takes that object instead of deciding again. :func:`of_finished_run` is the same object read back from a run
directory's ``model.json`` and ``tokenizer.json``, so :func:`lorasec.pipelines.run.load_run` builds the models the
way training did.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from flax import nnx

from lorasec.attacks import poison
from lorasec.config import HF_TOKENIZER, ConfigError, RunConfig, is_pretrained_reference, relocate
from lorasec.core import keys
from lorasec.data import synthetic
from lorasec.data.tasks import load_task
from lorasec.data.textdata import TextDataset
from lorasec.data.tokenizer import TextEncoder, word_level, wordpiece
from lorasec.models import Architecture, build_classifier
from lorasec.models.checkpoint import checkpoint_path, load_encoder_weights, load_pretrained
from lorasec.pipelines import rundir

KINDS = ("scratch", "pretrained", "run")


@dataclass(frozen=True)
class Start:
    """A classifier's starting point.

    Attributes:
        kind: ``"scratch"`` (weights drawn from the seed), ``"pretrained"`` (an encoder checkpoint under a fresh
            head) or ``"run"`` (a finished full fine-tuning run's whole classifier).
        source: the checkpoint directory or the starting run's directory (resolved); None from scratch.
        architecture: the classifier's shapes, with the run config's dropout (and pooling, for a checkpoint).
        num_classes: width of the head.
        encoder: the tokenizer at the run's ``data.seq_len``; None for a BERT directory without one (the model
            builds, text cannot be encoded: :meth:`text_encoder` says so).
    """

    kind: str
    source: Path | None
    architecture: Architecture
    num_classes: int
    encoder: TextEncoder | None

    def text_encoder(self) -> TextEncoder:
        """The tokenizer, or an error naming the checkpoint that has none."""
        if self.encoder is None:
            raise ConfigError(f"model.pretrained = {str(self.source)!r} has no {HF_TOKENIZER}, so text cannot be "
                              f"encoded for it; add the tokenizer its weights were trained with to that directory")
        return self.encoder

    def classifier(self, seed: int, *, weights: bool = True) -> nnx.Module:
        """The plain classifier (no adapters): drawn from ``seed``'s ``params`` key, then, with ``weights``, the
        encoder checkpoint's or the starting run's parameters loaded over it."""
        model = build_classifier(self.architecture, self.num_classes, rngs=nnx.Rngs(params=keys.key(seed, "params")))
        if weights and self.kind == "pretrained":
            load_encoder_weights(model.encoder, self.source)
        elif weights and self.kind == "run":
            nnx.update(model, rundir.load_params(self.source, model))
        return model

    def origin(self) -> dict[str, str]:
        """How ``model.json`` records it: ``{"pretrained": path or "", "init_from": path or ""}``."""
        return {"pretrained": str(self.source) if self.kind == "pretrained" else "",
                "init_from": str(self.source) if self.kind == "run" else ""}


def resolve(cfg: RunConfig, train: TextDataset | None = None) -> Start:
    """``cfg``'s starting point. From scratch on a data file without ``data.vocab_file``, the word-level vocabulary
    is learnt from the training texts ``train`` (read here when not given).

    Raises:
        ConfigError: the starting run is not a full fine-tuning run of the same classes and length, the checkpoint
            is shorter than ``data.seq_len``, or the synthetic language differs from the one it was trained on.
    """
    if cfg.model.init_from:
        start = _from_run(cfg)
    elif cfg.model.pretrained:
        start = _from_checkpoint(cfg)
    else:
        return _from_scratch(cfg, train)
    if cfg.data.source == "synthetic" and start.encoder is not None:
        vocab = start.encoder.tokenizer.get_vocab()
        unknown = [w for w in synthetic.vocabulary(cfg.data) if w not in vocab]
        if unknown:
            raise ConfigError(f"data: the synthetic language differs from the one {str(start.source)!r} was "
                              f"trained on ({len(unknown)} words unknown, e.g. {unknown[0]!r}); use its "
                              f"data.vocab_size / num_classes / cue_words_per_class")
    return start


def _dropouts(cfg: RunConfig) -> dict:
    m = cfg.model
    return {"dropout": m.dropout, "attention_dropout": m.attention_dropout, "head_dropout": m.head_dropout}


def _from_run(cfg: RunConfig) -> Start:
    source = Path(cfg.model.init_from)
    starting = rundir.read_config(source)
    where = f"model.init_from = {cfg.model.init_from!r}"
    if starting.adapter.method != "full":
        raise ConfigError(f"{where}: a {starting.adapter.method} run; start from a full fine-tuning run (its weights "
                          f"are one plain classifier)")
    if starting.data.num_classes != cfg.data.num_classes:
        raise ConfigError(f"{where}: has {starting.data.num_classes} classes, data.num_classes = "
                          f"{cfg.data.num_classes}")
    if starting.data.seq_len < cfg.data.seq_len:
        raise ConfigError(f"data.seq_len = {cfg.data.seq_len}: the starting run {str(source)!r} was built for "
                          f"{starting.data.seq_len} positions")
    meta = rundir.read_model(source)
    return Start("run", source.resolve(), meta["architecture"].with_(**_dropouts(cfg)), cfg.data.num_classes,
                 rundir.read_tokenizer(source, cfg.data.seq_len))


def _from_checkpoint(cfg: RunConfig) -> Start:
    source = checkpoint_path(cfg.model.pretrained).resolve()
    arch = load_pretrained(source)
    if arch.max_positions < cfg.data.seq_len:
        raise ConfigError(f"data.seq_len = {cfg.data.seq_len}: the pretrained model has only {arch.max_positions} "
                          f"positions")
    tokenizer = source / HF_TOKENIZER
    encoder = TextEncoder.from_json(tokenizer.read_text(), cfg.data.seq_len) if tokenizer.is_file() else None
    return Start("pretrained", source, arch.with_(**_dropouts(cfg), pooling=cfg.model.pooling), cfg.data.num_classes,
                 encoder)


def _from_scratch(cfg: RunConfig, train: TextDataset | None) -> Start:
    seq_len = cfg.data.seq_len
    if cfg.data.vocab_file:
        encoder = wordpiece(cfg.data.vocab_file, seq_len)
    elif cfg.data.source == "synthetic":
        encoder = word_level(synthetic.vocabulary(cfg.data), seq_len)
    else:
        if train is None:
            train, _ = load_task(cfg.data)
        texts = [*train.texts, *poison.trigger_words(cfg.attack)]
        encoder = word_level(sorted({w for text in texts for w in re.findall(r"\w+|[^\w\s]+", text.lower())}),
                             seq_len)
    arch = Architecture.from_config(cfg.model, encoder.vocab_size, seq_len)
    return Start("scratch", None, arch, cfg.data.num_classes, encoder)


def of_finished_run(run_dir: Path, cfg: RunConfig) -> Start:
    """The start a finished run recorded in its ``model.json``, with its tokenizer; the local files it names
    (a checkpoint directory or the starting run) must still be there.

    Raises:
        ConfigError: the run predates self-describing run directories, or its starting files are gone.
    """
    if not rundir.describes_itself(run_dir):
        raise ConfigError(f"{str(run_dir)!r} was written by a lorasec before 0.2 (no model.json, tokenizer.json or "
                          f"test.jsonl); train it again with the same config")
    meta = rundir.read_model(run_dir)
    origin = relocate({"model": dict(meta["start"])}, run_dir)["model"]  # the directory may have moved
    pretrained, init_from = origin.get("pretrained", ""), origin.get("init_from", "")
    if pretrained and not is_pretrained_reference(pretrained):
        raise ConfigError(f"the pretrained checkpoint this run started from is gone ({pretrained!r}); "
                          f"`lorasec fetch {cfg.model.pretrained}` or the original directory restores it")
    if init_from and not (Path(init_from) / "params").is_dir():
        raise ConfigError(f"the run this run started from is gone ({init_from!r}); its starting weights cannot "
                          f"be rebuilt")
    kind, source = ("pretrained", Path(pretrained)) if pretrained else ("run", Path(init_from)) if init_from \
        else ("scratch", None)
    return Start(kind, source, meta["architecture"], meta["num_classes"],
                 rundir.read_tokenizer(run_dir, cfg.data.seq_len))
