"""Ranks diverge: every rank allreduces a "gradient" (Horovod names it allreduce.fc1.weight) each
step, but rank 1 stops after ``--steps-on-rank1`` steps and keeps running without calling
collectives (as if it ran out of data), so the other ranks wait in a collective it never joins."""

import argparse
import time

import horovod.torch as hvd
import torch

import hvdtrain.torch as ht

parser = argparse.ArgumentParser()
parser.add_argument("--steps-on-rank1", type=int, default=5)
args = parser.parse_args()
ctx = ht.init()

for step in range(100000):
    if ctx.rank == 1 and step == args.steps_on_rank1:
        print("rank 1: out of data, no more collectives", flush=True)
        time.sleep(3600)
    hvd.allreduce(torch.ones(8), name="fc1.weight")
    time.sleep(0.02)
