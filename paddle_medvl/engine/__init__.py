"""Training: ``train(cfg)`` (``engine/run.py``) is what ``tools/train.py`` runs; the loop over
paddlenlp's Trainer is ``engine/trainer.py``, checkpoints ``checkpoint.py`` and ``state.py``."""
from .run import check_train_config, resume_folder, train

__all__ = ["check_train_config", "resume_folder", "train"]
