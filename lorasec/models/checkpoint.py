"""Pretrained encoder checkpoints: what ``model.pretrained`` names, resolved to a lorasec checkpoint directory.

A checkpoint directory holds ``model.json`` (the architecture and how it was made), ``params/`` (the encoder's
weights) and, unless it was converted from a directory without one, ``tokenizer.json``. It comes from
``lorasec pretrain``, from a pinned registry model
(``minilm-l6``, fetched once), or from a user's Hugging Face BERT directory; the last two are converted once into
the cache, under a key made from the files' contents (a moved or copied directory maps to the same entry, an
edited one to a new entry).
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

from flax import nnx

from lorasec.config import HF_FILES, HF_TOKENIZER, PRETRAINED_MODELS, ConfigError
from lorasec.core import files
from lorasec.data import fetch
from lorasec.models import Architecture
from lorasec.models.hf_import import convert
from lorasec.models.transformer import TransformerEncoder


def content_key(directory: Path) -> str:
    """sha256 over the Hugging Face files' bytes: the converted-weights cache key of ``directory`` (hashed once
    per process and file version: size and modification time)."""
    present = [name for name in (*HF_FILES, HF_TOKENIZER) if (Path(directory) / name).is_file()]
    stamps = tuple((name, *_stamp(directory / name)) for name in present)
    return _content_key(str(Path(directory).resolve()), stamps)


def _stamp(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


@functools.lru_cache(maxsize=16)
def _content_key(directory: str, stamps: tuple) -> str:
    digest = hashlib.sha256()
    for name, *_ in stamps:
        digest.update(name.encode())
        digest.update(files.sha256_file(Path(directory) / name).encode())
    return digest.hexdigest()[:32]


def checkpoint_path(value: str | Path) -> Path:
    """``model.pretrained`` as a lorasec checkpoint directory (module docstring)."""
    value = str(value)
    if value in PRETRAINED_MODELS:
        entry = fetch.fetch(value)
        return _converted(entry, entry / "lorasec")
    path = Path(value)
    if (path / "model.json").is_file():
        return path
    if path.is_dir() and all((path / name).is_file() for name in HF_FILES):
        return _converted(path, fetch.cache_root() / "converted" / content_key(path))
    raise ConfigError(f"model.pretrained = {value!r}: neither a lorasec checkpoint (model.json), a BERT directory "
                      f"({', '.join(HF_FILES)}) nor a pinned model ({', '.join(PRETRAINED_MODELS)})")


def _converted(source: Path, target: Path) -> Path:
    if (target / "model.json").is_file():
        return target
    return convert(source, target)


def load_pretrained(path: str | Path) -> Architecture:
    """The architecture of a pretrained checkpoint."""
    return Architecture.from_dict(files.read_json(checkpoint_path(path) / "model.json")["architecture"])


def load_pretrained_tokenizer(path: str | Path) -> str:
    """The tokenizer JSON of a pretrained checkpoint, or an error saying that it has none."""
    tokenizer = checkpoint_path(path) / HF_TOKENIZER
    if not tokenizer.is_file():
        raise ConfigError(f"model.pretrained = {str(path)!r} has no {HF_TOKENIZER}, so text cannot be encoded for "
                          f"it; add the tokenizer its weights were trained with to that directory")
    return tokenizer.read_text()


def load_encoder_weights(encoder: TransformerEncoder, path: str | Path) -> None:
    """Overwrite ``encoder``'s parameters with the checkpoint's (shapes must match)."""
    state = files.load_state(checkpoint_path(path) / "params", nnx.state(encoder, nnx.Param))
    nnx.update(encoder, state)
