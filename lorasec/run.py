"""One fine-tuning run end to end: data -> poisoner -> tokens -> model (+ adapter) -> trainer -> metrics.

Each stage is a plain function so a notebook can call any of them alone; :func:`train_run` chains them and
writes the run directory (``config.json``, ``metrics.jsonl``, ``checkpoints/``, ``params/``,
``poisoned_indices.json``, ``results.json``).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from flax import nnx

from lorasec import artifacts, datasets, lora, metrics, poison, rora, synthetic
from lorasec.config import REAL_DATA, ConfigError, RunConfig, from_dict, load, replace, to_dict
from lorasec.models import Architecture, build_classifier
from lorasec.pretrain import load_encoder_weights, load_pretrained
from lorasec.textdata import TextDataset, read_text_file
from lorasec.tokenizer import TextEncoder, word_level, wordpiece
from lorasec.train import ArrayData, classification_loss, fit, predict


def load_task(cfg: RunConfig) -> tuple[TextDataset, TextDataset]:
    """Clean (train, test) sets of the configured task."""
    d = cfg.data
    if d.source == "synthetic":
        return synthetic.train_test(d)
    if d.source in REAL_DATA:
        parts = datasets.splits(datasets.load(d.source, d.data_dir), d.seed, validation=d.validation_fraction,
                                test=d.test_fraction, max_train=d.max_train, max_test=d.max_test)
        return parts.train, parts.test
    train = read_text_file(d.train_file, d.text_field, d.label_field, field_name="data.train_file")
    test = read_text_file(d.test_file, d.text_field, d.label_field, train.label_names if
                          not all(n.isdigit() for n in train.label_names) else None, field_name="data.test_file")
    if train.num_classes != d.num_classes:
        raise ConfigError(f"data.num_classes = {d.num_classes}: the training file has {train.num_classes} "
                          f"labels ({', '.join(train.label_names)})")
    return train, test


def make_text_encoder(cfg: RunConfig, train: TextDataset) -> TextEncoder:
    """The starting run's tokenizer (``model.init_from``), else the pretrained checkpoint's, else WordPiece from
    ``data.vocab_file``, else word level."""
    seq_len = cfg.data.seq_len
    if cfg.model.init_from or cfg.model.pretrained:
        if cfg.model.init_from:
            source = cfg.model.init_from
            encoder = TextEncoder.from_json(prepare_data(starting_config(cfg))[2].to_json(), seq_len)
        else:
            source = cfg.model.pretrained
            encoder = TextEncoder.from_json(load_pretrained(source)[1], seq_len)
        if cfg.data.source == "synthetic":
            vocab = encoder.tokenizer.get_vocab()
            unknown = [w for w in synthetic.vocabulary(cfg.data) if w not in vocab]
            if unknown:
                raise ConfigError(f"data: the synthetic language differs from the one {source!r} was trained "
                                  f"on ({len(unknown)} words unknown, e.g. {unknown[0]!r}); use its "
                                  f"data.vocab_size / num_classes / cue_words_per_class")
        return encoder
    if cfg.data.vocab_file:
        return wordpiece(cfg.data.vocab_file, seq_len)
    if cfg.data.source == "synthetic":
        return word_level(synthetic.vocabulary(cfg.data), seq_len)
    words = sorted({w for text in train.texts for w in re.findall(r"\w+|[^\w\s]+", text.lower())})
    return word_level(words, seq_len)


def prepare_data(cfg: RunConfig) -> tuple[poison.Poisoned, TextDataset, TextEncoder]:
    """(poisoned training set, clean test set, tokenizer) exactly as a run of ``cfg`` builds them; a word-level
    vocabulary of file data comes from the poisoned training texts, so every consumer must start here."""
    train, test = load_task(cfg)
    poisoned = poison.poison(train, cfg.attack, seed=cfg.seed)
    return poisoned, test, make_text_encoder(cfg, poisoned.data)


def starting_config(cfg: RunConfig) -> RunConfig:
    """The config of the run ``model.init_from`` names, checked to fit ``cfg`` (a full FT classifier, same
    classes, room for ``data.seq_len``)."""
    source = cfg.model.init_from
    start = load(RunConfig, source)
    if start.adapter.method != "full":
        raise ConfigError(f"model.init_from = {source!r}: a {start.adapter.method} run; start from a full "
                          f"fine-tuning run (its weights are one plain classifier)")
    if start.data.num_classes != cfg.data.num_classes:
        raise ConfigError(f"model.init_from = {source!r}: has {start.data.num_classes} classes, data.num_classes "
                          f"= {cfg.data.num_classes}")
    if start.data.seq_len < cfg.data.seq_len:
        raise ConfigError(f"data.seq_len = {cfg.data.seq_len}: the starting run {source!r} was built for "
                          f"{start.data.seq_len} positions")
    return start


def build_model(cfg: RunConfig, vocab_size: int) -> nnx.Module:
    """Classifier from the config (or the pretrained checkpoint's architecture, or the starting run's whole
    classifier), LoRA applied if configured."""
    rngs = nnx.Rngs(params=cfg.seed)
    if cfg.model.init_from:
        start = replace(starting_config(cfg), model={"dropout": cfg.model.dropout})
        model = build_model(start, vocab_size)
        nnx.update(model, artifacts.load_state(Path(cfg.model.init_from) / "params", nnx.state(model)))
    elif cfg.model.pretrained:
        arch, _ = load_pretrained(cfg.model.pretrained)
        if arch.max_positions < cfg.data.seq_len:
            raise ConfigError(f"data.seq_len = {cfg.data.seq_len}: the pretrained model has only "
                              f"{arch.max_positions} positions")
        arch = arch.with_(dropout=cfg.model.dropout, pooling=cfg.model.pooling)
        model = build_classifier(arch, cfg.data.num_classes, rngs=rngs)
        load_encoder_weights(model.encoder, cfg.model.pretrained)
    else:
        arch = Architecture.from_config(cfg.model, vocab_size, cfg.data.seq_len)
        model = build_classifier(arch, cfg.data.num_classes, rngs=rngs)
    if cfg.adapter.method == "lora":
        lora.apply_lora(model, cfg.adapter, rngs=rngs)
    return model


@dataclass(frozen=True)
class Evaluation:
    clean_accuracy: float
    attack_success_rate: float | None
    triggered_accuracy: float | None
    robust_accuracy: float | None
    per_trigger: dict


def evaluate(model: nnx.Module, cfg: RunConfig, test: TextDataset, encoder: TextEncoder) -> Evaluation:
    """CACC on the clean test set; with a trigger attack, ASR / triggered / robust accuracy per trigger
    (averaged over triggers for the headline numbers)."""
    batch = cfg.train.eval_batch_size
    tokens, mask = encoder.encode(test.texts)
    cacc = metrics.clean_accuracy(predict(model, tokens, mask, batch), test.labels)
    per_trigger = {}
    for trigger in poison.triggers_for(cfg.attack):
        texts = poison.apply_trigger(test.texts, trigger, seed=cfg.seed)
        t_tokens, t_mask = encoder.encode(texts)
        pred = predict(model, t_tokens, t_mask, batch)
        per_trigger[" | ".join(trigger.phrases)] = {
            "attack_success_rate": metrics.attack_success_rate(pred, test.labels, cfg.attack.target_label),
            "triggered_accuracy": metrics.triggered_accuracy(pred, test.labels),
            "robust_accuracy": metrics.robust_accuracy(pred, test.labels, cfg.attack.target_label),
        }
    if not per_trigger:
        return Evaluation(cacc, None, None, None, {})
    mean = {k: float(np.mean([v[k] for v in per_trigger.values()])) for k in next(iter(per_trigger.values()))}
    return Evaluation(cacc, mean["attack_success_rate"], mean["triggered_accuracy"], mean["robust_accuracy"],
                      per_trigger)


def _first_difference(a, b, prefix=""):
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            found = _first_difference(a.get(key), b.get(key), f"{prefix}{key}.")
            if found:
                return found
        return None
    return None if a == b else (prefix.rstrip("."), a, b)


def claim_run_dir(cfg: RunConfig, out_dir: Path) -> dict | None:
    """Prepare ``out_dir`` for ``cfg``: returns finished results if the same run already completed there;
    refuses a directory that holds a different run (never overwrite work)."""
    resolved = to_dict(cfg)
    config_path = out_dir / "config.json"
    if config_path.is_file():
        # read back through the dataclass, so fields added to lorasec since that run count at their defaults
        previous = to_dict(from_dict(RunConfig, artifacts.read_json(config_path)))
        diff = _first_difference(resolved, previous)
        if diff:
            raise ConfigError(f"--out {str(out_dir)!r} holds a run with {diff[0]} = {diff[2]!r} (this config: "
                              f"{diff[1]!r}); choose another --out or remove that directory")
        if (out_dir / "results.json").is_file():
            return artifacts.read_json(out_dir / "results.json")
    elif out_dir.exists() and any(out_dir.iterdir()):
        raise ConfigError(f"--out {str(out_dir)!r} exists and is not a lorasec run directory; choose another")
    artifacts.write_json(config_path, resolved)
    return None


def train_run(cfg: RunConfig, out_dir: str | Path | None = None, *, progress: bool = True) -> dict:
    """Fine-tune under the configured attack and evaluate; resumes an interrupted run in ``out_dir``."""
    began = time.perf_counter()
    out_dir = Path(out_dir) if out_dir is not None else None
    if out_dir is not None:
        finished = claim_run_dir(cfg, out_dir)
        if finished is not None:
            return finished
    poisoned, test, encoder = prepare_data(cfg)
    tokens, mask = encoder.encode(poisoned.data.texts)
    model = build_model(cfg, encoder.vocab_size)
    trainable = lora.trainable_filter(cfg.adapter)
    loss_fn = classification_loss
    if cfg.adapter.rora_tr > 0:
        loss_fn = rora.penalised_loss(classification_loss, cfg.adapter.rora_tr, cfg.adapter.rora_tr_k, model)
    fitted = fit(model, trainable, ArrayData(tokens, mask, poisoned.data.labels), cfg.train, seed=cfg.seed,
                 loss_fn=loss_fn, run_dir=out_dir, progress=progress,
                 description=f"{cfg.adapter.method} seed {cfg.seed}")
    # Pt changes only the evaluated model's scales; params/ keeps the trained factors, results the new scales.
    pt_scales = rora.post_training_rescale(model, cfg.adapter.rora_pt_layers) if cfg.adapter.rora_pt_layers else {}
    evaluation = evaluate(model, cfg, test, encoder)
    _, trainable_state, rest = nnx.split(model, trainable, ...)
    results = {
        "clean_accuracy": evaluation.clean_accuracy,
        "attack_success_rate": evaluation.attack_success_rate,
        "triggered_accuracy": evaluation.triggered_accuracy,
        "robust_accuracy": evaluation.robust_accuracy,
        "per_trigger": evaluation.per_trigger,
        "steps": fitted.steps,
        "resumed_from_step": fitted.resumed_from,
        "final_loss": fitted.final_loss,
        "wall_seconds": time.perf_counter() - began,
        "train_step_compilations": fitted.compilations,
        "num_poisoned": int(len(poisoned.indices)),
        "num_train": len(poisoned.data),
        "num_test": len(test),
        "trainable_parameters": lora.count_params(trainable_state),
        "total_parameters": lora.count_params(trainable_state) + lora.count_params(rest),
        "adapted_layers": sorted(lora.lora_layers(model)),
        "rora_pt_scales": pt_scales,
    }
    if out_dir is not None:
        artifacts.write_json(out_dir / "poisoned_indices.json", poisoned.indices.tolist())
        artifacts.save_state(out_dir / "params", nnx.state(model))
        artifacts.write_json(out_dir / "results.json", results)  # last: marks the run complete
    return results


@dataclass
class FinishedRun:
    """A finished run reloaded: its config, the classifier as training started (plain, no adapters: LoRA's
    B = 0, PiSSA's and DoRA's initial effective weights equal W0), the trained classifier (adapter scales as
    configured, before any Pt rescale), the tokenizer and the clean test set."""

    cfg: RunConfig
    start: nnx.Module
    tuned: nnx.Module
    encoder: TextEncoder
    test: TextDataset


def load_run(run_dir: str | Path) -> FinishedRun:
    run_dir = Path(run_dir)
    if not (run_dir / "params").is_dir() or not (run_dir / "results.json").is_file():
        raise ConfigError(f"{str(run_dir)!r}: not a finished lorasec run (params/ or results.json missing)")
    cfg = load(RunConfig, run_dir)
    _, test, encoder = prepare_data(cfg)
    tuned = build_model(cfg, encoder.vocab_size)
    nnx.update(tuned, artifacts.load_state(run_dir / "params", nnx.state(tuned)))
    start = build_model(replace(cfg, adapter={"method": "full"}), encoder.vocab_size)
    return FinishedRun(cfg, start, tuned, encoder, test)


def adapted_kernels(run: FinishedRun) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(starting kernel, tuned effective kernel) per adapted matrix in lorasec's (in, out) layout: the LoRA
    layers of a LoRA run, every encoder linear layer of a full fine-tuning run (the new head is left out)."""
    start = lora.linear_layers(run.start)
    if run.cfg.adapter.method == "lora":
        return {name: (np.asarray(start[name].kernel[...]), np.asarray(layer.effective_kernel()))
                for name, layer in lora.lora_layers(run.tuned).items()}
    tuned = lora.linear_layers(run.tuned)
    return {name: (np.asarray(start[name].kernel[...]), np.asarray(tuned[name].kernel[...]))
            for name in tuned if name.startswith("encoder.")}
