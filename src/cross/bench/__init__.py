"""bench: the benchmarks behind `cross bench kernels` and `cross bench model`.

weights   the benchmark weights: layer shapes of BERT-base and Llama-2-7B, synthetic sparsity
          (uniform, non-uniform), 2:4 pruning, and the real pruned Transformer masks of DLMC
methods   the ways to compute X @ W^T that are compared (cuBLAS, cross, cuSPARSE CSR, torch's
          BSR Triton kernels, 2:4 semi-structured), prepared once per weight, bound to an input
timing    device time (CUDA-graph replay or plain event timing, L2 flushed) and the fp32 check
kernels   the kernel grid: cases, rows, the command that reproduces each row, the run
models    whole models (BERT-base, a Llama-2-7B-shaped decoder, the real MiniLM) dense vs cross
report    CSV files, break-even sparsities, the figures and the markdown summaries

Everything except the measurement itself runs on a CPU (the dry runs, the reports, the tests).
"""
