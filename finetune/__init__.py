"""Shared code behind run_finetune.py: recipes, ABC data, tokenizer, packing, models, run plans."""

import logging

# bitsandbytes 0.50 logs a warning when it is imported on a CPU with AVX512-BF16 and the optional `kernels`
# package (which would fetch a faster 4-bit kernel from the hub) is missing. Its own fallback kernel is
# correct, and the warning would otherwise open every command's output, one-line errors included.
# Entry scripts import this package before transformers so that this runs before bitsandbytes loads.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
