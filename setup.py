from setuptools import find_packages, setup

setup(
    name="hvdtrain",
    version="0.1.0",
    description="Data-parallel training of Keras 3 and PyTorch models on Horovod, with MLflow "
    "tracking.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["hvdtrain", "hvdtrain.*"]),
    # The pinned requirements travel with the package (``hvdtrain.cudastack`` reads gpu.txt):
    # hvdtrain/requirements links to the checkout's requirements/, which install.sh and Docker use.
    package_data={"hvdtrain": ["requirements/*.txt"]},
    python_requires=">=3.10",
    # Horovod must be built against the installed frameworks (scripts/install.sh does it),
    # so it is not a pip dependency here; the pinned, tested set is requirements/cpu.txt. Each
    # framework is bounded to the tested minor releases (torch: 2.13 CPU, 2.14 in the GPU flavour):
    # hvdtrain.keras hooks Keras optimizer internals and Horovod links against one torch and one
    # TensorFlow, so a newer release must be tested (and Horovod rebuilt) before the bound moves.
    install_requires=["mlflow>=3.17,<3.18", "tqdm", "psutil"],
    extras_require={
        "torch": ["torch>=2.13,<2.15"],
        "tensorflow": ["tensorflow>=2.21,<2.22", "keras>=3.15,<3.16"],
        "test": ["pytest"],
    },
    entry_points={"console_scripts": ["hvdtrain=hvdtrain.cli:main"]},
)
