"""The frozen LLMs behind one interface (``base.py``), one file per family: ``opt.py``, ``t5.py``
(ChatGLM follows). Importing the package registers every family under its ``architecture`` name."""
from .base import (NO_LLM, LanguageConfigError, LanguageModel, LMOutput, build_language_model, default_dtype,
                   language_class, read_settings, register)
from .opt import opt_config  # importing a family registers it
from .t5 import t5_config

__all__ = ["NO_LLM", "LanguageConfigError", "LanguageModel", "LMOutput", "build_language_model", "default_dtype",
           "language_class", "opt_config", "read_settings", "register", "t5_config"]
