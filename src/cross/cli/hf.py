"""Hugging Face models for `cross run` and the demo: loading, pruning, sentence embeddings, agreement
and timing. transformers is imported on use, so `cross analyze` and `cross plan` never load it."""

from __future__ import annotations

import importlib.metadata
import platform
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from .inputs import InputError

#: Calibration text for Wanda: varied registers, lengths and topics, so the input-feature norms are
#: not those of one kind of sentence.
CALIBRATION_SENTENCES = (
    "The committee will meet on Thursday to review the budget for next year.",
    "She poured the tea, sat by the window and watched the rain fall on the harbour.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "How do I reset my password if I no longer have access to my email?",
    "The striker scored twice in the second half and the crowd went wild.",
    "Preheat the oven to 200 degrees and bake the bread for forty minutes.",
    "Interest rates rose again, and mortgage applications fell to a ten-year low.",
    "The patient reported mild headaches and was advised to drink more water.",
    "In 1969, two astronauts walked on the Moon while a third orbited above.",
    "Please find attached the signed contract and the invoice for March.",
    "A binary search halves the interval at every step, so it runs in logarithmic time.",
    "The old lighthouse keeper knew every rock along the northern coast.",
    "Our flight was delayed by three hours because of a storm over the Alps.",
    "Volunteers planted two thousand trees along the river this spring.",
    "Can you recommend a quiet restaurant near the station for a family dinner?",
    "The court ruled that the new law was inconsistent with the constitution.",
)

#: Sentences embedded by the demo and by `cross run` when no --text is given: pairs on a few topics,
#: different in length from each other and from the calibration set.
EVAL_SENTENCES = (
    "A man is playing a guitar on a street corner.",
    "Someone performs music outdoors for people walking by.",
    "The central bank raised interest rates by half a percentage point.",
    "Borrowing money became more expensive after the policy decision.",
    "Neural networks can be pruned to remove most of their weights with little loss in accuracy.",
    "Cats sleep for most of the day.",
    "The recipe calls for two cups of flour, one egg and a pinch of salt.",
    "Where is the nearest train station?",
)

#: Output heads left alone by `cross run --prune` (and not planned): the layers that pruning studies
#: keep dense because every output depends on all of their weights.
HEAD_NAMES = ("lm_head", "pooler", "classifier", "score", "qa_outputs")


def not_a_head(module: nn.Module, fqn: str) -> bool:
    """filter_fn for pruning and sparsify_: every nn.Linear except the output heads."""
    return not any(part in HEAD_NAMES for part in fqn.split("."))


def pick_device(device: str | torch.device | None = None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise InputError(f"device {device!r}: expected cpu or cuda (or cuda:INDEX)") from None
    if device.type not in ("cpu", "cuda"):
        raise InputError(f"device {device}: expected cpu or cuda (or cuda:INDEX), got {device.type}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device}: expected a visible CUDA GPU, found none (use --device cpu)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise InputError(f"device {device}: expected a GPU index below {torch.cuda.device_count()} (the visible GPUs)")
    return device


def dtype_for(device: torch.device) -> torch.dtype:
    """bf16 on GPUs (what the kernels are for), fp32 on the CPU (the reference path computes in fp32)."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def check_model_dir(model_dir: str | Path) -> Path:
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise InputError(f"{model_dir}: expected a Hugging Face model directory, got "
                         f"{'a file' if model_dir.exists() else 'no such file or directory'}")
    if not (model_dir / "config.json").is_file():
        raise InputError(f"{model_dir}: expected a Hugging Face model directory (with config.json), found no config.json")
    return model_dir


#: A sentence every real tokenizer maps to something other than unknown tokens
TOKENIZER_PROBE = "hello world, this is a test"


def load_model(model_dir: str | Path, device: torch.device, dtype: torch.dtype, progress: bool = True):
    """(model in eval mode on device/dtype, tokenizer) from a local Hugging Face model directory.
    progress=False turns transformers' own progress bars off (process-wide: it is a global switch)."""
    model_dir = check_model_dir(model_dir)
    import transformers

    if not progress:
        transformers.utils.logging.disable_progress_bar()
    try:
        transformers.AutoConfig.from_pretrained(model_dir)  # an unknown model type, named as such
        tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
        _check_tokenizer(model_dir, tokenizer)
        model = transformers.AutoModel.from_pretrained(model_dir)
    except (OSError, ValueError) as e:  # missing files, an unknown model type, an unusable tokenizer
        why = " ".join(str(e).split())  # one line
        why = why if len(why) <= 300 else why[:297] + "..."
        raise InputError(f"{model_dir}: expected a model and tokenizer that transformers can load, got "
                         f"{type(e).__name__}: {why}") from None
    return model.to(device=device, dtype=dtype).eval(), tokenizer


def _check_tokenizer(model_dir: Path, tokenizer) -> None:
    """Without its vocabulary file transformers may build a tokenizer of a few special tokens that maps
    every word to the unknown token: a run would then compare embeddings of nothing."""
    ids = tokenizer(TOKENIZER_PROBE)["input_ids"]
    special = set(tokenizer.all_special_ids)
    words = [i for i in ids if i not in special]
    if not words or (tokenizer.unk_token_id is not None and all(i == tokenizer.unk_token_id for i in words)):
        raise InputError(f"{model_dir}: expected a tokenizer that knows words, got one that maps "
                         f"{TOKENIZER_PROBE!r} to unknown tokens only (is its vocabulary file missing?)")


def tokenize(tokenizer, texts: Sequence[str], device: torch.device) -> dict[str, torch.Tensor]:
    if tokenizer.pad_token is None:  # decoder-only tokenizers (Llama, GPT-2) ship without one
        tokenizer.pad_token = tokenizer.eos_token
    batch = tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt")
    return {k: v.to(device) for k, v in batch.items()}


def calibration_batches(tokenizer, device: torch.device, texts: Sequence[str] = CALIBRATION_SENTENCES) -> list[dict]:
    """One batch per sentence: no padding tokens in the Wanda input norms."""
    return [tokenize(tokenizer, [t], device) for t in texts]


@torch.no_grad()
def embed(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sentence embeddings as sentence-transformers makes them for MiniLM: the last hidden state
    mean-pooled over real tokens (attention-mask weighted), L2-normalised; fp32 [batch, hidden]."""
    hidden = model(**batch).last_hidden_state.float()
    mask = batch["attention_mask"].unsqueeze(-1).float()
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, dim=-1)


def agreement(got: torch.Tensor, want: torch.Tensor) -> dict[str, float]:
    """Per-sentence cosine similarity (min, mean) and the largest relative L2 error
    ||got - want|| / ||want|| over sentences."""
    got, want = got.double(), want.double()
    cos = torch.nn.functional.cosine_similarity(got, want, dim=-1)
    rel = (got - want).norm(dim=-1) / want.norm(dim=-1).clamp(min=1e-30)
    return {"min_cosine": float(cos.min()), "mean_cosine": float(cos.mean()), "max_rel_err": float(rel.max())}


@torch.no_grad()
def time_forward(model: nn.Module, batch: dict[str, torch.Tensor], reps: int = 5, warmup: int = 1) -> float:
    """Median wall time of one forward in milliseconds (host clock; synchronised on a GPU)."""
    cuda = next(iter(batch.values())).is_cuda

    def sync():
        if cuda:
            torch.cuda.synchronize()

    for _ in range(warmup):
        model(**batch)
    times = []
    for _ in range(reps):
        sync()
        t0 = time.perf_counter()
        model(**batch)
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def execution_path(device: torch.device) -> str:
    if device.type == "cuda":
        return (f"CUDA ({torch.cuda.get_device_name(device)}): plans run on the cross GPU kernels; "
                f"layers and buckets kept dense run torch's dense matmul (cuBLAS)")
    return "CPU: plans run on the PyTorch reference executor; CPU timings say nothing about GPU speed"


def environment(device: torch.device, dtype: torch.dtype) -> dict[str, str]:
    """What ran where, as printed and written to the reports."""
    from .. import __version__

    return {
        "device": str(device) if device.type != "cuda" else f"{device} ({torch.cuda.get_device_name(device)})",
        "dtype": str(dtype).removeprefix("torch."),
        "execution": execution_path(device),
        "cross": __version__,
        "torch": torch.__version__,
        "triton": _version("triton"),
        "transformers": _version("transformers"),
        "python": platform.python_version(),
        "host": f"{platform.machine()}, {torch.get_num_threads()} torch CPU threads",
    }
