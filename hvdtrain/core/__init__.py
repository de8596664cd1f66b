"""Framework-free policy shared by the torch and Keras adapters.

Nothing in here imports torch, TensorFlow or Horovod: the adapters pass in what they own
(a communicator, tensors) and the core decides what to do with it.
"""
