"""Measure the cost model on this GPU and save it (what `cross profile` does), then print the bands.

    PYTHONPATH=src python benchmarks/profile_costmodel.py --out benchmarks/results/h100
"""

import argparse
import shutil
import time
from pathlib import Path

from cross.costmodel.profile import cache_path, profile
from cross.partition import bands
from cross.tiling import TileKind

ap = argparse.ArgumentParser()
ap.add_argument("--out", default=None, help="also copy the measured JSON here")
ap.add_argument("--force", action="store_true")
args = ap.parse_args()
t0 = time.time()
model, path, measured = profile(force=args.force)
print(f"{'measured' if measured else 'cached'} cost model: {path} ({time.time() - t0:.0f} s)")
print(model.source, model.spec)
for key in ("fixed_us", "item_latency", "mixed_variant"):
    print(f"{key}: {model.provenance.get(key, '-')}")
for n in (1, 16, 64, 128, 512, 2048):
    b = bands(model, (64, 64), n, TileKind.BITMAP)
    sparse = b["density"][b["band"] == "sparse"]
    swing = b["density"][b["band"] == "swing"]
    print(f"N={n:5d}: bitmap wins below density {sparse.max() if sparse.size else 0:.3f}; swing "
          f"{(swing.min(), swing.max()) if swing.size else '-'}")
if args.out:
    Path(args.out).mkdir(parents=True, exist_ok=True)
    shutil.copy(path, Path(args.out) / "costmodel.json")
