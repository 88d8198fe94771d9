"""Configuration: the schema of every config (:mod:`~lorasec.config.schema`, values only), the one loader that
reads them from TOML/JSON with dotted ``--set`` overrides (:mod:`~lorasec.config.loading`), the grid language of
multi-run commands (:mod:`~lorasec.config.grid`) and the check against this machine's files and memory
(:mod:`~lorasec.config.environment`), taken apart from the schema where work starts.
"""

from lorasec.config.environment import check as check_environment
from lorasec.config.environment import check_memory, is_pretrained_reference, physical_memory
from lorasec.config.loading import (
    apply_overrides,
    coerce,
    from_dict,
    load,
    parse_override,
    read_file,
    relocate,
    replace_config,
    to_dict,
    write_origin,
)
from lorasec.config.schema import (
    ADAPTERS,
    ATTACKS,
    COMPUTE_DTYPES,
    DATA_SOURCES,
    DEFENCE_RORA,
    DEFENCES,
    HF_FILES,
    HF_TOKENIZER,
    LORA_INITS,
    MODEL_KINDS,
    POOLINGS,
    PRETRAINED_MODELS,
    REAL_DATA,
    RORA_PARTS,
    SCHEDULES,
    SEED_LIMIT,
    SELECTIONS,
    SYNTHETIC_ONLY,
    TRAIN_PARTS,
    TRIGGER_ATTACKS,
    AdapterConfig,
    AttackConfig,
    BackdoorConfig,
    DataConfig,
    ModelConfig,
    PretrainConfig,
    OUTCOMES,
    PREDICTORS,
    PredictConfig,
    PredictionClaim,
    PurifyConfig,
    RoRAConfig,
    RunConfig,
    StudyConfig,
    TrainConfig,
    defence_fields,
    parse_arm,
    parse_attack,
    parse_defence,
)
from lorasec.core.errors import ConfigError


def load_config(path=None, overrides=(), *, kind: type | None = None):
    """A config from a file and dotted overrides, its values validated (files and memory are checked apart, by
    :func:`check_environment`).

    Args:
        path: a TOML or JSON file, or a run directory (its ``config.json``); None for the defaults.
        overrides: ``KEY=VALUE`` strings, the value read as TOML (``"train.lr=3e-5"``).
        kind: the config class (default :class:`RunConfig`).
    Returns:
        The validated config.
    """
    return load(kind or RunConfig, path, overrides)


__all__ = [
    "ADAPTERS", "ATTACKS", "COMPUTE_DTYPES", "DATA_SOURCES", "LORA_INITS", "MODEL_KINDS", "POOLINGS", "SCHEDULES",
    "SELECTIONS", "TRAIN_PARTS", "DEFENCES", "DEFENCE_RORA", "HF_FILES", "HF_TOKENIZER", "PRETRAINED_MODELS", "REAL_DATA",
    "RORA_PARTS", "SEED_LIMIT", "SYNTHETIC_ONLY", "TRIGGER_ATTACKS",
    "AdapterConfig", "AttackConfig", "BackdoorConfig", "ConfigError", "DataConfig", "ModelConfig", "PretrainConfig",
    "OUTCOMES", "PREDICTORS", "PredictConfig", "PredictionClaim", "PurifyConfig", "RoRAConfig", "RunConfig",
    "StudyConfig", "TrainConfig",
    "apply_overrides", "check_environment", "check_memory", "coerce", "defence_fields", "from_dict",
    "is_pretrained_reference", "load", "load_config", "parse_arm", "parse_attack", "parse_defence",
    "parse_override", "physical_memory", "read_file", "relocate", "replace_config", "to_dict", "write_origin",
]
