#!/usr/bin/env python3
"""Moves the SwiftKV tensors of a llama_swiftkv checkpoint off their conversion init (as a
distillation run would), deterministically: adds Gaussian noise of 30% of each tensor's standard
deviation to norm_swiftkv and every q/k/v_proj_swiftkv. Uses only numpy and safetensors.

usage: perturb_swiftkv.py CHECKPOINT_DIR [--seed N]
"""
import argparse
import os

import numpy as np
from safetensors.numpy import load_file, save_file

ap = argparse.ArgumentParser()
ap.add_argument("ckpt")
ap.add_argument("--seed", type=int, default=0)
args = ap.parse_args()
path = os.path.join(args.ckpt, "model.safetensors")
tensors = load_file(path)
rng = np.random.default_rng(args.seed)
for name, t in tensors.items():
    if "swiftkv" in name:
        scale = 0.3 * float(t.std()) if t.size > 1 and float(t.std()) > 0 else 0.1
        tensors[name] = (t + rng.normal(0.0, scale, t.shape)).astype(t.dtype)
save_file(tensors, path, metadata={"format": "pt"})
