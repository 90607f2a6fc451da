"""Shared code behind run_finetune.py: recipes, ABC data, tokenizer, packing, models, run plans."""
