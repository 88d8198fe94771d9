"""The configuration reference, read from the schema itself: every field's type, default and meaning.

A field's meaning is the docstring written under it in :mod:`lorasec.config.schema` (its constraints are stated
there too, and enforced by ``validate()``). ``lorasec config show`` prints a resolved config as commented TOML
(:func:`commented_toml`), and ``docs/reference/config.md`` is rendered from :func:`markdown_reference`, so a new
field reaches both without editing them by hand; a field without a meaning fails the test suite.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import json
import textwrap
from dataclasses import dataclass
from typing import Any

from lorasec.config import schema

CONFIGS = {"run": schema.RunConfig, "pretrain": schema.PretrainConfig, "study": schema.StudyConfig,
           "purify": schema.PurifyConfig, "predict": schema.PredictConfig}  # what each kind of config file holds (the commands that read it)
COMMANDS = {"run": "lorasec train, lorasec ntk, a sweep spec's [base]", "pretrain": "lorasec pretrain",
            "study": "lorasec study", "purify": "lorasec purify", "predict": "lorasec predict"}


@dataclass(frozen=True)
class FieldDoc:
    name: str  # dotted, e.g. "train.lr"
    type: str
    value: Any
    meaning: str


@functools.cache
def meanings(cls: type) -> dict[str, str]:
    """The docstring under each field of the dataclass ``cls``, by field name ("" where there is none)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    found = {}
    for stmt, after in zip(body, body[1:]):
        if (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)):
            found[stmt.target.id] = " ".join(after.value.value.split())
    return {f.name: found.get(f.name, "") for f in dataclasses.fields(cls)}


def describe(cfg: Any, prefix: str = "") -> list[FieldDoc]:
    """Every leaf field of the config ``cfg`` (an instance), sections flattened into dotted names.

    Args:
        cfg: a config dataclass instance (its values are shown; ``cls()`` gives the defaults).
        prefix: dotted prefix of ``cfg`` within an enclosing config.
    Returns:
        One :class:`FieldDoc` per leaf, in declaration order.
    """
    out = []
    docs = meanings(type(cfg))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            out += describe(value, f"{prefix}{f.name}.")
        else:
            out.append(FieldDoc(prefix + f.name, str(f.type), value, docs[f.name]))
    return out


def sections(cls: type, prefix: str = "") -> dict[str, str]:
    """Each section (a nested config) of ``cls`` by dotted name -> the meaning its parent gives it."""
    out = {}
    docs = meanings(cls)
    for f in dataclasses.fields(cls):
        default = getattr(cls(), f.name)
        if dataclasses.is_dataclass(default):
            out[prefix + f.name] = docs[f.name]
            out.update(sections(type(default), f"{prefix}{f.name}."))
    return out


def toml_value(value: Any) -> str:
    """A field's value as TOML writes it (strings and lists in JSON's spelling, which TOML reads alike)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    if dataclasses.is_dataclass(value):
        return toml_value({f.name: getattr(value, f.name) for f in dataclasses.fields(value)})
    return json.dumps(value, ensure_ascii=False)


def commented_toml(cfg: Any) -> str:
    """``cfg`` as a TOML file with each field's meaning as a comment above it: a starting point to save and edit
    (``tomllib`` reads it back to the same config)."""
    titles = sections(type(cfg))
    grouped: dict[str, list[FieldDoc]] = {"": []}  # a table's own fields come before its sub-tables, as TOML needs
    for doc in describe(cfg):
        grouped.setdefault(doc.name.rpartition(".")[0], []).append(doc)
    lines: list[str] = []
    for section, docs in grouped.items():
        if section:
            lines += ["", *_comment(titles.get(section, "")), f"[{section}]"]
        for doc in docs:
            lines += [*_comment(doc.meaning), f"{doc.name.rpartition('.')[2]} = {toml_value(doc.value)}"]
    return "\n".join(lines).lstrip("\n") + "\n"


def _comment(text: str) -> list[str]:
    if not text:
        return []
    return textwrap.wrap(text, width=116, initial_indent="# ", subsequent_indent="# ", break_on_hyphens=False)


def markdown_reference() -> str:
    """Per config kind a table of every field: dotted name, type, default, meaning (``docs/reference/config.md``)."""
    tables = [markdown_table(cls, f"{kind}: {COMMANDS[kind]}") for kind, cls in CONFIGS.items()]
    return "\n".join([*tables, markdown_table(schema.PredictionClaim, "each [[claims]] entry of a predict spec")])


def markdown_table(cls: type, used_by: str) -> str:
    """One config class as a Markdown section: its docstring, then every field's dotted name, type, default and
    meaning; ``used_by`` says what reads it."""
    out = [f"### {cls.__name__} ({used_by})", "", " ".join((cls.__doc__ or "").split()), "",
           "| field | type | default | meaning |", "|---|---|---|---|"]
    for doc in describe(cls()):
        cells = (f"`{doc.name}`", f"`{doc.type}`", f"`{toml_value(doc.value)}`", doc.meaning)
        out.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(out) + "\n"


__all__ = ["CONFIGS", "FieldDoc", "commented_toml", "describe", "markdown_reference", "markdown_table", "meanings",
           "sections", "toml_value"]
