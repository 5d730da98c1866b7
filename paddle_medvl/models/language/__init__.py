"""The frozen LLMs behind one interface (``base.py``), one file per family: ``opt.py`` (T5 and
ChatGLM follow). Importing the package registers every family under its ``architecture`` name."""
from .base import (NO_LLM, LanguageConfigError, LanguageModel, LMOutput, build_language_model, default_dtype,
                   read_settings, register)
from .opt import opt_config  # importing the family registers it

__all__ = ["NO_LLM", "LanguageConfigError", "LanguageModel", "LMOutput", "build_language_model", "default_dtype",
           "opt_config", "read_settings", "register"]
