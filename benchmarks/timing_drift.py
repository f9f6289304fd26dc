"""Does a timing depend on how long the GPU has been busy? Times one BERT-base encoder forward
(batch 1 x 128, CUDA-graph replay, L2 flushed) over and over from a cold start and prints each
median with the SM clock, power and temperature that nvidia-smi reports next to it.

    PYTHONPATH=src python benchmarks/timing_drift.py --seconds 15
"""

import argparse
import subprocess
import time

import torch

from cross.bench import models
from cross.bench.timing import measure_us


def smi() -> str:
    q = "clocks.sm,clocks.mem,power.draw,temperature.gpu,clocks_throttle_reasons.active"
    out = subprocess.run(["nvidia-smi", f"--query-gpu={q}", "--format=csv,noheader"], capture_output=True, text=True)
    return out.stdout.strip()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=60.0)
    args = ap.parse_args()
    print(f"idle: {smi()}", flush=True)
    with torch.no_grad():
        wl = models.bert(0.5)
        x = wl.inputs(1, 128)
        t0 = time.time()
        while time.time() - t0 < args.seconds:
            us, how = measure_us(lambda: wl.model(**x), models.MODEL_WARMUP_MS, models.MODEL_REP_MS)
            print(f"{time.time() - t0:6.1f} s  {us / 1e3:.4f} ms  {how}  {smi()}", flush=True)


if __name__ == "__main__":
    main()
