"""`hf_ilp.csrc`: the C++/CUDA sources of the Half-S FP4 kernels, shipped as package data.

A regular package (this file) rather than a bare folder, so that `pip install -e .` can import
it under its mapped name too; `hf_ilp.fp4` compiles these files on first use.
"""
