"""Shared code behind run_finetune.py, evaluate_checkpoints.py and sample.py: recipes, ABC data, tokenizer,
packing, models, run plans, generation, and (finetune.evaluation) the scoring of runs."""

import logging


def quiet_bitsandbytes() -> None:
    """Silence the warning bitsandbytes logs as it is imported on a CPU with AVX512-BF16 when the optional `kernels`
    package (which would fetch a faster 4-bit kernel from the hub) is missing: its own fallback kernel is correct,
    and the warning would otherwise open every command's output, one-line errors included. Entry scripts call this
    before importing transformers, which imports bitsandbytes."""
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
