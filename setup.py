"""paddle_medvl: BLIP-2-style medical vision-language models on PaddlePaddle (CPU, GPU, Ascend NPU)."""
from setuptools import find_packages, setup

# Paddle is NOT a hard requirement. The CPU wheel (`paddlepaddle`), the CUDA wheel
# (`paddlepaddle-gpu`, from Paddle's own index) and the Ascend stack (`paddlepaddle` +
# `paddle-custom-npu`) all install the same `paddle/` folder; listing `paddlepaddle` here made
# `pip install -e .` write the CPU wheel over a user's GPU build. The `cpu` extra pulls the CPU
# wheel (the quickstart and CI); GPU and NPU users install their Paddle first (README, Devices).
PADDLE_CPU = "paddlepaddle>=2.6"

INSTALL_REQUIRES = [
    "paddlenlp>=2.8,<3",
    # `import paddlenlp` (2.8.1) fails with the newer releases of these three (REFERENCE.md
    # section 1). They live here, not only in constraints.txt, so that `pip install -e .` without
    # `-c constraints.txt` still gives an environment that imports.
    "huggingface_hub<0.25",
    "aistudio-sdk<0.3",
    "datasets<3",
    # (dill<0.3.5 and multiprocess<=0.70.12.2 are paddlenlp 2.8.1's own requirements: pip sees them.)
    # numpy 1.x, the major CI runs (constraints.txt: 1.26.4). paddlenlp's tool-helpers 0.1.2 requires
    # numpy<=1.26.4; without this bound pip takes numpy 2 and falls back to tool-helpers 0.1.1.
    "numpy<2",
    # datasets imports pyarrow, and pyarrow >= 20 fails to import with numpy 1.x ("pyarrow requires
    # NumPy 2.0 or newer").
    "pyarrow<20",
    "pillow",
    "pyyaml",
    # safe_open(..., framework="paddle") exists from safetensors 0.7 (0.6.2: "framework paddle is
    # invalid"); 0.7 and 0.8 read through view_dtype, which paddle_medvl.workarounds.stride_kernels
    # switches on. constraints.txt pins the release the workaround's test was run on.
    "safetensors>=0.7",
    "tqdm",
    "nltk",
    "rouge-score",
    "pycocoevalcap",
    "tokenizers",  # trains the demo's tokenizers offline (paddle_medvl/data/demo_tokenizer.py)
]

EXTRAS_REQUIRE = {
    "cpu": [PADDLE_CPU],
    # setuptools: tests/test_install.py runs setup.py, and Python 3.12 venvs come without it.
    "test": ["pytest", "hypothesis", "pydicom>=3", "setuptools"],
    # No "parity" extra: the fixture generator needs transformers 5, whose huggingface_hub
    # paddlenlp 2.8.1 cannot import; it has its own venv (tests/parity/requirements.txt).
    "dicom": ["pydicom>=3"],
    # BERTScore (the ImageCLEF caption metric) with a local model; transformers 4.46 is the
    # newest that accepts paddlenlp's huggingface_hub<0.25.
    "bertscore": ["torch==2.13.0", "bert-score==0.3.13", "transformers==4.46.3"],
}

# From 3.10: paddle_medvl/config.py reads `X | None` field types at run time (types.UnionType).
# Below 3.13: paddlenlp's tool-helpers requires numpy<=1.26.4, which has no wheels past CPython 3.12.
PYTHON_REQUIRES = ">=3.10,<3.13"

setup(
    name="paddle_medvl",
    version="0.1.0",
    description="Fine-tune, evaluate, serve and export BLIP-2-style medical vision-language models "
    "on CPU, NVIDIA GPU and Ascend NPU (PaddleCustomDevice).",
    python_requires=PYTHON_REQUIRES,
    # custom_device/ sits at the top of the repository (it is its own layer) but installs
    # as paddle_medvl.custom_device so that the plugin source travels with the package.
    packages=find_packages(include=["paddle_medvl", "paddle_medvl.*"]) + ["paddle_medvl.custom_device"],
    package_dir={"paddle_medvl.custom_device": "custom_device"},
    package_data={"paddle_medvl.custom_device": ["*.cc", "README.md"]},
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
)
