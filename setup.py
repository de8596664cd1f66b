from setuptools import find_packages, setup

setup(
    name="hvdtrain",
    version="0.1.0",
    description="Data-parallel training of Keras 3 and PyTorch models on Horovod, with MLflow tracking.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["hvdtrain", "hvdtrain.*"]),
    python_requires=">=3.10",
    # Horovod must be built against the installed frameworks (scripts/install.sh does it),
    # so it is not a pip dependency here; the pinned, tested set is requirements/cpu.txt.
    install_requires=["mlflow>=3.0", "tqdm", "psutil"],
    extras_require={
        "torch": ["torch>=2.1"],
        "tensorflow": ["tensorflow>=2.16", "keras>=3.0"],
        "test": ["pytest"],
    },
    entry_points={"console_scripts": ["hvdtrain=hvdtrain.cli:main"]},
)
