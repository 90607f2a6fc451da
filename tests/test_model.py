"""LoRA and QLoRA on a pretrained base whose tokenizer is not ours: adapters saved, merged model loads."""

import json
import re
import subprocess
import sys

import pytest
import torch
from conftest import REPO, run_finetune
from safetensors.torch import load_file
from tokenizers import ByteLevelBPETokenizer
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

pytestmark = pytest.mark.integration  # every test here trains a model or runs a command end to end

LORA_RECIPE = REPO / "recipes" / "music_abc_lora.json"
SHORT = [
    "--max_steps", "3", "--gradient_accumulation_steps", "1", "--per_device_train_batch_size", "2",
    "--max_train_samples", "32", "--max_eval_samples", "8", "--eval_steps", "2", "--save_steps", "2",
    "--logging_steps", "1", "--warmup_steps", "1", "--max_seq_length", "256",
]


@pytest.fixture(scope="module")
def base_model(corpus, tmp_path_factory):
    """A tiny Llama with a byte-level BPE tokenizer trained on tunes, saved like a hub checkpoint."""
    path = tmp_path_factory.mktemp("base")
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(corpus["train"][:2000], vocab_size=400, special_tokens=["<|endoftext|>"])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<|endoftext|>")
    tokenizer.save_pretrained(path)
    config = AutoConfig.for_model(
        "llama", vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    return path


def finetune(*args):
    return run_finetune(LORA_RECIPE, *args)


def test_lora_trains_saves_an_adapter_and_merges_into_a_plain_model(base_model, tmp_path):
    out = tmp_path / "lora"
    result = finetune("--model_name_or_path", base_model, *SHORT, "--bf16", "false", "--merge_adapter", "--output_dir", out)
    assert "trainable in LoRA r=16 adapters" in result.stdout
    assert (out / "adapter_config.json").exists() and (out / "adapter_model.safetensors").exists()
    assert not (out / "model.safetensors").exists()  # the base is not copied: only the adapters
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == str(base_model)
    # The tunes went through the base model's own BPE tokenizer, not the character tokenizer.
    assert AutoTokenizer.from_pretrained(out).get_vocab() == AutoTokenizer.from_pretrained(base_model).get_vocab()

    merged = AutoModelForCausalLM.from_pretrained(out / "merged")
    base = load_file(base_model / "model.safetensors")
    merged_weights = load_file(out / "merged" / "model.safetensors")
    name = "model.layers.0.self_attn.q_proj.weight"
    assert merged_weights[name].shape == base[name].shape and not torch.equal(merged_weights[name], base[name])
    tokenizer = AutoTokenizer.from_pretrained(out / "merged")
    output = merged.generate(**tokenizer("M:6/8\nK:D\n", return_tensors="pt"), max_new_tokens=10, do_sample=False)
    assert tokenizer.decode(output[0]).startswith("M:6/8\nK:D\n")

    # The adapters evaluate like any checkpoint: through the base model's BPE tokenizer, per character.
    result = subprocess.run(
        [sys.executable, "evaluate_checkpoints.py", str(out), "--num_samples", "2", "--max_new_tokens", "24"],
        cwd=REPO, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads((out / "eval" / "metrics.json").read_text())["rows"]
    # Constrained sampling works through a BPE vocabulary too: its tokens are checked by their text.
    assert [(row["step"], row["tunes"]) for row in rows] == [(s, k) for s in (2, 3) for k in ("own", "constrained")]
    assert all(row["bits_per_char"] > 0 for row in rows)
    assert (out / "eval" / "samples" / "step-3-constrained" / "001.abc").is_file()
    assert (out / "eval" / "samples" / "step-3" / "001.abc").is_file()


def test_qlora_trains_adapters_over_a_4bit_base(base_model, tmp_path):
    """QLoRA: NF4 base weights (bitsandbytes runs them on this CPU too), adapters saved in peft's format."""
    out = tmp_path / "qlora"
    result = finetune(
        "--model_name_or_path", base_model, *SHORT, "--bf16", "false", "--load_in_4bit", "--output_dir", out
    )
    assert "(4-bit NF4 base)" in result.stdout
    assert (out / "adapter_model.safetensors").exists()
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 3
    assert all(entry["loss"] == entry["loss"] for entry in state["log_history"] if "loss" in entry)  # no NaN


def test_lora_without_a_base_model_is_refused(tmp_path, capsys):
    from conftest import run_cli

    code, _, stderr = run_cli([REPO / "recipes/music_abc.json", "--use_peft", "--output_dir", tmp_path / "o"], capsys)
    assert code == 2 and "'use_peft' adapts a pretrained model" in stderr


def test_lora_and_qlora_recipes_take_a_local_base_of_a_shorter_context(base_model, capsys):
    """The recipes name a hub model; a local checkpoint in its place is taken as it is, its shorter context too."""
    from conftest import run_cli

    for recipe in (LORA_RECIPE, REPO / "recipes" / "music_abc_qlora.json"):
        code, stdout, stderr = run_cli([recipe, "--model_name_or_path", base_model, "--dry_run"], capsys)
        assert code == 0, stderr
        assert re.search(r"model            \S+( \(4-bit NF4 base\))?: [\d.]+k parameters, [\d.]+k trainable in LoRA "
                         r"r=16 adapters", stdout)
        assert "max_seq_length 1024 is past the model's context: rows of 512 tokens" in stdout
        assert "rows of 512 tokens (max_seq_length)" in stdout


def test_a_hub_base_out_of_reach_says_to_name_a_local_one(tmp_path):
    import os

    result = subprocess.run(
        [sys.executable, "run_finetune.py", str(LORA_RECIPE), "--dry_run", "--output_dir", str(tmp_path / "o")],
        cwd=REPO, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 2 and "name a local checkpoint instead" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_4bit_layers_the_packed_cpu_kernel_cannot_hold_use_the_generic_one(base_model, monkeypatch):
    """On AVX512-BF16 CPUs bitsandbytes repacks 4-bit weights for evaluation and fails on narrow layers: those
    layers are sent to the generic kernel. The flag is forced here so that AVX2-only hosts test the choice too."""
    import bitsandbytes
    from transformers import BitsAndBytesConfig

    from finetune.model import keep_4bit_layers_on_generic_cpu_kernel

    real_avx512bf16 = bool(bitsandbytes.functional.has_avx512bf16())
    monkeypatch.setattr(bitsandbytes.nn.modules, "has_avx512bf16", lambda: True)
    model = AutoModelForCausalLM.from_pretrained(
        base_model, quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True)
    )
    sent = keep_4bit_layers_on_generic_cpu_kernel(model)
    # hidden 32 < the 64-wide block: every layer that reads the hidden state; down_proj reads 64 and writes 32.
    assert sorted({name.split(".")[-1] for name in sent}) == ["gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
    assert all(model.get_submodule(f"model.layers.{i}.mlp.down_proj").support_avx512bf16_for_cpu for i in (0, 1))
    if real_avx512bf16:  # the packed kernel exists only on such CPUs: run it
        with torch.no_grad():
            assert torch.isfinite(model.eval()(torch.tensor([[1, 2, 3]])).logits).all()
