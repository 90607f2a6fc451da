"""Tokenizer and model from the recipe: a new decoder from `model_config`, a checkpoint to fine-tune, or
LoRA/QLoRA adapters (peft) on a checkpoint."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from pathlib import Path

import torch
from peft import AutoPeftModelForCausalLM, LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    BitsAndBytesConfig,
    PretrainedConfig,
    PreTrainedTokenizerBase,
)

from .args import ModelArguments
from .attention import training_attention
from .errors import UserError
from .packing import start_token_id
from .tokenizer import build_abc_tokenizer, learn_merges

ADAPTER_CONFIG = "adapter_config.json"
TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json")
# Config field names for the context length, by architecture family.
CONTEXT_LENGTH_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


def _load_or_explain(loader, name: str, what: str, **kwargs):
    try:
        return loader(name, **kwargs)
    except (OSError, ValueError) as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        offline = "couldn't connect" in first_line or "offline" in first_line.lower()
        hint = "; without the hub, name a local checkpoint instead, e.g. a run's output_dir" if offline else ""
        raise UserError(f"cannot load {what} '{name}': {first_line}{hint}") from None


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


def resolve_block_size(max_seq_length: int | None, config: PretrainedConfig, trained: bool = False) -> int:
    """Tokens per packed row: max_seq_length, or the model's context length when it is unset. A trained model
    (`trained`: a checkpoint to fine-tune or evaluate) with a shorter context gets rows of its context, so that a
    recipe written for one base takes another; for a new model the recipe contradicts itself, which is an error."""
    context = context_length(config)
    block_size = max_seq_length or context
    if block_size > context:
        if trained:
            return context
        raise UserError(f"max_seq_length {block_size} is longer than the model's context ({context})")
    return block_size


def load_tokenizer(
    model_args: ModelArguments, max_seq_length: int, train_texts: Iterable[str] = ()
) -> PreTrainedTokenizerBase:
    """The recipe's tokenizer; `tokenizer_merges` are learned from `train_texts` (the same texts, the same merges)."""
    name = model_args.tokenizer_name_or_path or model_args.model_name_or_path
    if name is None:
        merges = learn_merges(train_texts, model_args.tokenizer_merges) if model_args.tokenizer_merges else []
        return build_abc_tokenizer(model_max_length=max_seq_length, merges=merges)
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
    return {"bos_token_id": start_token_id(tokenizer), "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}


def load_model(
    model_args: ModelArguments,
    config: PretrainedConfig,
    tokenizer: PreTrainedTokenizerBase,
    on_meta: bool = False,
    compute_dtype: torch.dtype = torch.float32,
) -> torch.nn.Module:
    """The model to train, LoRA-wrapped when the recipe asks. `on_meta=True` builds it without weights or memory."""
    kwargs = {
        "attn_implementation": training_attention(model_args.attn_implementation),
        "trust_remote_code": model_args.trust_remote_code,
    }
    if model_args.load_in_4bit and not on_meta:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=compute_dtype,
            bnb_4bit_use_double_quant=True,
        )
    if model_args.model_name_or_path and not on_meta:
        model = _load_or_explain(AutoModelForCausalLM.from_pretrained, model_args.model_name_or_path, "model", **kwargs)
        if model_args.load_in_4bit:
            keep_4bit_layers_on_generic_cpu_kernel(model)
    else:
        if not model_args.model_name_or_path:
            config.vocab_size = len(tokenizer)
            for key, value in _special_token_ids(tokenizer).items():
                setattr(config, key, value)
        with torch.device("meta") if on_meta else contextlib.nullcontext():
            model = AutoModelForCausalLM.from_config(config, **kwargs)
    if model.get_input_embeddings().weight.shape[0] < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer))
    model.generation_config.update(**_special_token_ids(tokenizer))
    if model_args.use_peft:
        if model_args.load_in_4bit and not on_meta:
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        model = get_peft_model(model, lora_config(model_args))
    return model


def keep_4bit_layers_on_generic_cpu_kernel(model: torch.nn.Module) -> list[str]:
    """Send 4-bit layers that bitsandbytes' packed CPU kernel cannot hold to its generic kernel; return their names.

    On a CPU with AVX512-BF16, bitsandbytes 0.50 repacks a Linear4bit's weights for a faster kernel the first
    time it runs without gradients (evaluation, generation). The repacking needs `in_features` divisible by the
    quantization block (64) and `out_features` by 32, and fails mid-run otherwise: `shape '[32, 0]' is invalid`.
    Real models' layers fit; small ones (tests, toy bases) need not. The generic kernel, used on every other
    CPU and during training, is correct for any shape. The switch is the module's own flag, read at each forward.
    """
    sent = []
    for name, module in model.named_modules():
        quant_state = getattr(getattr(module, "weight", None), "quant_state", None)
        if getattr(module, "support_avx512bf16_for_cpu", False) and quant_state is not None:
            if module.in_features % quant_state.blocksize or module.out_features % 32:
                module.support_avx512bf16_for_cpu = False
                sent.append(name)
    return sent


def lora_config(model_args: ModelArguments) -> LoraConfig:
    return LoraConfig(
        r=model_args.lora_r,
        lora_alpha=model_args.lora_alpha,
        lora_dropout=model_args.lora_dropout,
        target_modules=model_args.lora_target_modules or "all-linear",
        task_type="CAUSAL_LM",
    )


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(all parameters, trainable parameters); 4-bit weights are counted as the numbers they stand for."""
    if isinstance(model, PeftModel):
        trainable, total = model.get_nb_trainable_parameters()
        return total, trainable
    total = model.num_parameters()
    return total, total


def merge_adapter(adapter_dir: str, out_dir: str) -> None:
    """Save base model + adapters as one plain model that AutoModelForCausalLM loads without peft.

    The base is reloaded in full precision, so this also works for a QLoRA (4-bit) run.
    """
    model = AutoPeftModelForCausalLM.from_pretrained(adapter_dir, dtype=torch.float32)
    model.merge_and_unload().save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(adapter_dir).save_pretrained(out_dir)


def is_model_dir(path: Path) -> bool:
    """A saved model (config.json) or LoRA adapter (adapter_config.json)."""
    return (path / "config.json").is_file() or (path / ADAPTER_CONFIG).is_file()


def has_tokenizer(path: Path) -> bool:
    return any((path / name).is_file() for name in TOKENIZER_FILES)


def load_checkpoint(path: str, dtype: torch.dtype = torch.float32):
    """A saved model or LoRA adapter with its tokenizer, in eval mode, for evaluation and sampling."""
    folder = Path(path)
    if not folder.is_dir():
        raise UserError(f"{path} is not a folder; pass a checkpoint folder such as runs/music_abc_quick/checkpoint-150")
    if not is_model_dir(folder):
        raise UserError(f"{path} holds no model (no config.json or {ADAPTER_CONFIG}); pass a checkpoint folder")
    if not has_tokenizer(folder):
        raise UserError(f"{path} has no tokenizer; save the tokenizer beside the model (run_finetune.py does)")
    loader = AutoPeftModelForCausalLM if (folder / ADAPTER_CONFIG).is_file() else AutoModelForCausalLM
    model = _load_or_explain(loader.from_pretrained, path, "model", dtype=dtype)
    tokenizer = _load_or_explain(AutoTokenizer.from_pretrained, path, "tokenizer")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.eval(), tokenizer
