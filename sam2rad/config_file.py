"""A training configuration from a JSON/YAML file plus overrides (e.g. command-line flags)."""
from __future__ import annotations

import json
from pathlib import Path

from sam2rad.train import TrainConfig


def train_config_from(config_file: Path | None, overrides: dict[str, object]) -> TrainConfig:
    """TrainConfig fields from `config_file` (JSON, or YAML for .yaml/.yml), then every override
    that is not None on top; raises ValueError for unknown or bad fields."""
    values: dict = {}
    if config_file:
        text = Path(config_file).read_text()
        if Path(config_file).suffix in (".yaml", ".yml"):
            import yaml  # only configs written in YAML need it

            values = yaml.safe_load(text) or {}
        else:
            values = json.loads(text)
    values.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig.from_dict(values)
