"""Packaging for endofuse.

The source folders sit at the repository's top level (realtime/, kernels/, model/,
train/, demo/) and are installed under the `endofuse.` namespace through
`package_dir`, so nothing installs a bare `model` or `train` package.
"""
import re
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).parent
VERSION = re.search(r'__version__ = "([^"]+)"', (HERE / "endofuse" / "__init__.py").read_text()).group(1)

# folder on disk -> import name
SUBPACKAGES = {
    "kernels": "endofuse.kernels",
    "model": "endofuse.model",
    "train": "endofuse.train",
    "realtime": "endofuse.realtime",
    "demo": "endofuse.demo",
}


def find_packages_mapped() -> tuple[list[str], dict[str, str]]:
    packages, package_dir = ["endofuse"], {"endofuse": "endofuse"}
    for folder, name in SUBPACKAGES.items():
        for init in sorted((HERE / folder).rglob("__init__.py")):
            rel = init.parent.relative_to(HERE)
            if "__pycache__" in rel.parts:
                continue
            dotted = ".".join((name, *rel.parts[1:]))
            packages.append(dotted)
            package_dir[dotted] = rel.as_posix()
    return packages, package_dir


packages, package_dir = find_packages_mapped()

EXTRAS = {
    # TensorRT wheels come from NVIDIA's own index (pypi.nvidia.com) on a CUDA machine.
    "gpu": ["tensorrt>=10.8", "onnxruntime-gpu>=1.20"],
    "demo": ["gradio>=6,<7", "gradio-client>=2", "matplotlib>=3.8"],
    # Holoscan 4.x Python operators; the CUDA runtime wheel lets it import on machines without CUDA.
    "holoscan": ["holoscan-cu12>=4.5,<5", "nvidia-cuda-runtime-cu12>=12.4", "pyyaml>=6"],
    # Frame classification and retrieval: the faiss index and what endofuse's own CLIP tokenizer needs (its
    # BPE vocabulary ships in endofuse.model's package data).
    "classify": ["faiss-cpu>=1.8", "ftfy>=6", "regex>=2023"],
    # `endofuse dicom`: DICOM objects (pydicom, highdicom's SEG), C-ECHO/C-FIND/C-STORE (pynetdicom) and the H.264
    # encoder of the video object (PyAV's wheels bundle FFmpeg with libx264; OpenCV's wheel has no H.264 encoder).
    "dicom": ["pydicom>=3,<4", "highdicom>=0.28", "pynetdicom>=3,<4", "av>=14"],
    # `endofuse serve`: one model for many rooms on Ray Serve (its HTTP proxy, batching, replicas, cluster)
    "serve": ["ray[serve]>=2.60,<3"],
    "dev": ["pytest>=8", "pytest-timeout>=2", "playwright>=1.45", "scipy>=1.11", "matplotlib>=3.8", "ruff>=0.17"],
}
EXTRAS["all"] = sorted({r for k, reqs in EXTRAS.items() if k != "gpu" for r in reqs})

OPENVINO_MACHINES = ("platform_machine == 'x86_64' or platform_machine == 'AMD64' or "
                     "platform_machine == 'aarch64' or platform_machine == 'arm64'")

setup(
    name="endofuse",
    version=VERSION,
    description="Real-time WLI/NBI fusion segmentation of laryngo-pharyngeal tumours (Align-Disentangle-Fuse)",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    license_files=["LICENSE"],
    python_requires=">=3.10",
    packages=packages,
    package_dir=package_dir,
    package_data={"endofuse.model": ["weights/*.pt", "clip_vocab/*"], "endofuse.demo": ["assets/*"],
                  "endofuse.realtime.holoscan": ["app.yaml", "holohub/*/*/metadata.json"]},
    include_package_data=False,
    install_requires=[
        "torch>=2.4",
        "numpy>=1.24",
        "opencv-python-headless>=4.8",
        "onnx>=1.16",
        "onnxscript>=0.2",
        "onnxruntime>=1.18",
        # The default CPU engine on x86 (bf16/INT8 on AMX, AVX-512-BF16, VNNI) and its INT8 quantiser; wheels exist
        # for x86-64 and 64-bit ARM. Their telemetry is kept from loading (realtime/engines/openvino_env.py).
        f"openvino>=2024.4,<2027; {OPENVINO_MACHINES}",
        f"nncf>=2.14,<4; {OPENVINO_MACHINES}",
        "tqdm>=4.60",
        "matplotlib>=3.8",
    ],
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["endofuse = endofuse.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Medical Science Apps.",
        "Topic :: Scientific/Engineering :: Image Recognition",
    ],
)
