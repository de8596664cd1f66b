"""Models the examples and the benchmark share, so that an installed hvdtrain (no checkout, no
examples) benchmarks the same GPT the examples train: ``torch_gpt`` (imports torch) and
``keras_gpt`` (imports Keras). Importing this package imports neither framework.
"""
