"""Tokenizer and model from the recipe: a new decoder from `model_config`, or a checkpoint to fine-tune."""

from __future__ import annotations

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PretrainedConfig, PreTrainedTokenizerBase

from .args import ModelArguments
from .errors import UserError
from .tokenizer import build_abc_tokenizer

# Config field names for the context length, by architecture family.
CONTEXT_LENGTH_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


def _load_or_explain(loader, name: str, what: str, **kwargs):
    try:
        return loader(name, **kwargs)
    except (OSError, ValueError) as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot load {what} '{name}': {first_line}") from None


def load_config(model_args: ModelArguments) -> PretrainedConfig:
    if model_args.model_name_or_path:
        return _load_or_explain(
            AutoConfig.from_pretrained, model_args.model_name_or_path, "model config",
            trust_remote_code=model_args.trust_remote_code,
        )
    settings = dict(model_args.model_config)
    model_type = settings.pop("model_type")
    try:
        return AutoConfig.for_model(model_type, **settings)
    except ValueError as e:
        raise UserError(f"'model_config': {' '.join(str(e).split())[:200]}") from None


def context_length(config: PretrainedConfig) -> int:
    for key in CONTEXT_LENGTH_KEYS:
        if isinstance(getattr(config, key, None), int):
            return getattr(config, key)
    raise UserError(f"the {config.model_type} config names no context length; set 'max_seq_length'")


def load_tokenizer(model_args: ModelArguments, max_seq_length: int) -> PreTrainedTokenizerBase:
    name = model_args.tokenizer_name_or_path or model_args.model_name_or_path
    if name is None:
        return build_abc_tokenizer(model_max_length=max_seq_length)
    tokenizer = _load_or_explain(
        AutoTokenizer.from_pretrained, name, "tokenizer", trust_remote_code=model_args.trust_remote_code
    )
    if tokenizer.eos_token_id is None:
        raise UserError(f"tokenizer '{name}' has no end-of-sequence token; tunes need one to end")
    if tokenizer.pad_token_id is None:
        # Padding is masked out of the loss and of attention, so reusing end-of-text is safe.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _special_token_ids(tokenizer: PreTrainedTokenizerBase) -> dict:
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    return {"bos_token_id": bos, "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}


def load_model(
    model_args: ModelArguments, config: PretrainedConfig, tokenizer: PreTrainedTokenizerBase, on_meta: bool = False
) -> torch.nn.Module:
    """The model to train. `on_meta=True` builds it without memory or weights, to count parameters."""
    kwargs = {"attn_implementation": model_args.attn_implementation, "trust_remote_code": model_args.trust_remote_code}
    if model_args.model_name_or_path and not on_meta:
        model = _load_or_explain(AutoModelForCausalLM.from_pretrained, model_args.model_name_or_path, "model", **kwargs)
    else:
        if not model_args.model_name_or_path:
            config.vocab_size = len(tokenizer)
            for key, value in _special_token_ids(tokenizer).items():
                setattr(config, key, value)
        with torch.device("meta") if on_meta else torch.device("cpu"):
            model = AutoModelForCausalLM.from_config(config, **kwargs)
    if model.get_input_embeddings().weight.shape[0] < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer))
    model.generation_config.update(**_special_token_ids(tokenizer))
    return model
