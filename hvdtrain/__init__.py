"""hvdtrain: data-parallel training of Keras 3 and PyTorch models on Horovod, tracked in MLflow."""

__version__ = "0.1.0"
