"""paddle_medvl: BLIP-2-style medical vision-language models on PaddlePaddle (CPU, GPU, Ascend NPU)."""
from setuptools import find_packages, setup

setup(
    name="paddle_medvl",
    version="0.1.0",
    description="Fine-tune, evaluate, serve and export BLIP-2-style medical vision-language models "
    "on CPU, NVIDIA GPU and Ascend NPU (PaddleCustomDevice).",
    python_requires=">=3.10",
    # custom_device/ sits at the top of the repository (it is its own layer) but installs
    # as paddle_medvl.custom_device so that the plugin source travels with the package.
    packages=find_packages(include=["paddle_medvl", "paddle_medvl.*"]) + ["paddle_medvl.custom_device"],
    package_dir={"paddle_medvl.custom_device": "custom_device"},
    package_data={"paddle_medvl.custom_device": ["*.cc", "README.md"]},
    install_requires=[
        "paddlepaddle>=2.6",
        "paddlenlp>=2.8,<3",
        "numpy",
        "pillow",
        "pyyaml",
        "safetensors",
        "tqdm",
        "nltk",
        "rouge-score",
        "pycocoevalcap",
        "tokenizers",  # trains the demo's tokenizers offline (paddle_medvl/data/demo_tokenizer.py)
    ],
    extras_require={
        "test": ["pytest", "hypothesis", "pydicom>=3"],
        # No "parity" extra: the fixture generator needs transformers 5, whose huggingface_hub
        # paddlenlp 2.8.1 cannot import; it has its own venv (tests/parity/requirements.txt).
        "dicom": ["pydicom>=3"],
        # BERTScore (the ImageCLEF caption metric) with a local model; transformers 4.46 is the
        # newest that accepts paddlenlp's huggingface_hub<0.25.
        "bertscore": ["torch==2.13.0", "bert-score==0.3.13", "transformers==4.46.3"],
    },
)
