"""The typed config of a run: `RunConfig` and its sections (the interventions section is `InterventionConfig`), how a
file maps onto them (`schema`), loading with `--set` overrides (`loading`), the names a config chooses from (`names`).

Room of `workflows`: the bottom; imports nothing of `workflows` (only `ldm.errors` and `ldm.hooks`' names).
"""

from workflows.config.interventions import (CAUSAL, VIEWS, EditSettings, InterventionConfig, PatchingConfig, TargetSpec,
                                            default_hooks)
from workflows.config.loading import dump_config, from_dict, load_config, parse_override
from workflows.config.names import (ACT_DTYPES, EXTRAS, FEATURE_CONTROLS, IMAGE_SOURCES, MAP_TARGETS, METHODS,
                                    MODEL_CONTROLS, PROMPT_SOURCES, STAGES, TARGETS, VECTOR_TARGETS)
from workflows.config.run_config import (RUNTIME_FIELDS, STAGE_SECTIONS, LabelerConfig, LabelsConfig, ProbesConfig,
                                         PromptsConfig, RunConfig, data_differences, validate)
from workflows.config.schema import ConfigError, flatten, to_dict

__all__ = ["ACT_DTYPES", "CAUSAL", "ConfigError", "EXTRAS", "EditSettings", "FEATURE_CONTROLS", "IMAGE_SOURCES", "InterventionConfig",
           "LabelerConfig", "LabelsConfig", "MAP_TARGETS", "METHODS", "MODEL_CONTROLS", "PatchingConfig", "ProbesConfig",
           "PROMPT_SOURCES", "PromptsConfig", "RUNTIME_FIELDS", "RunConfig", "STAGES", "STAGE_SECTIONS", "TARGETS", "TargetSpec", "VECTOR_TARGETS", "VIEWS",
           "data_differences", "default_hooks", "dump_config", "flatten", "from_dict", "load_config",
           "parse_override", "to_dict", "validate"]
