"""Checkpoints from other ecosystems -> paddle_medvl's layout.

``hf`` (Hugging Face safetensors), ``lavis`` (LAVIS ``.pth`` files) and ``safe_pickle``, the
allow-list reader of torch zip checkpoints and ``paddle.save`` pickles that never runs their code.
Import the module you need: this package imports none of them (``safe_pickle`` does not import Paddle).
"""
