from setuptools import find_packages, setup

setup(
    name="ovss-d2",
    version="0.1.0",
    description="Open-vocabulary semantic segmentation (ZeroSeg, SED, ERR-Seg, ViL-Seg) on Detectron2",
    packages=find_packages(exclude=("tests", "tests.*", "configs", "datasets", "demo", "tools")),
    package_data={"ovss_d2.modeling.clip": ["model_configs/*.json"], "ovss_d2.data.datasets": ["lists/*.json"]},
    python_requires=">=3.10",
    # Pinned, verified versions are in requirements.txt; detectron2 is installed by
    # tools/install_env.sh (it is not on PyPI under its own name).
    install_requires=[
        "torch>=2.1",
        "torchvision",
        "open_clip_torch>=2.24",
        "timm",
        "fvcore",
        "pycocotools",
        "opencv-python-headless",
        "numpy",
        "tqdm",
        "safetensors",
    ],
    # demo/app.py (the web demo); tools/install_env.sh installs the verified versions of
    # requirements-web.txt
    extras_require={"web": ["gradio>=6,<7"]},
)
