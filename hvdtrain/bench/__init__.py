"""``hvdtrain bench``: allreduce bandwidth and training-step speed of hvdtrain, raw Horovod and
torch DDP, measured side by side in the same processes (see BENCHMARKS.md)."""
