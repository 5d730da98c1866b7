"""paddle_medvl: BLIP-2-style medical vision-language models on PaddlePaddle."""

__version__ = "0.1.0"
