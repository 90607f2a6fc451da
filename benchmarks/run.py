"""Speed and memory of this repo against the machine's limit and the plain way, measured in one run.

    python benchmarks/run.py --quick        # the quick recipe's model only, fewer steps
    python benchmarks/run.py                # adds the music_abc and 100M models, longer runs (~30 min)
    python benchmarks/run.py --data-scale 100000,1000000   # data preparation at scale only (~5 min)

Every figure is a ratio to a baseline measured in the same run on the same machine, so it holds on a
noisy shared machine. Results go to benchmarks/results/<host-or-device>.json and are printed as a table.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import finetune

finetune.quiet_bitsandbytes()  # before transformers imports bitsandbytes (see its docstring)

import torch
from transformers import (
    AttentionInterface,
    DataCollatorForLanguageModeling,
    Trainer,
    TrainerCallback,
    default_data_collator,
    set_seed,
)

from finetune.attention import PACKED_SDPA
from finetune.data import clean_splits, load_raw_splits
from finetune.generation import SampleArguments, generate_tunes, prompt_batches
from finetune.loops import LoopPenaltyTrainer, pseudo_loop_rows
from finetune.model import load_config, load_model, load_tokenizer, resolve_block_size
from finetune.packing import tokenize_and_pack
from finetune.recipe import parse_recipe
from finetune.tables import markdown_table

REPO = Path(__file__).resolve().parent.parent
RESULTS = []


def record(name, value, unit, baseline=None, settings=None, target=None):
    ratio = value / baseline if baseline else None
    RESULTS.append({"name": name, "value": value, "unit": unit, "baseline": baseline, "ratio": ratio,
                    "target": target, "settings": settings or {}})
    base = f"{baseline:.4g}" if baseline is not None else "-"
    shown = f"{ratio:.3f}" if ratio is not None else "-"
    print(f"  {name:<52} {value:>10.4g} {unit:<9} baseline {base:>10}  ratio {shown:>7}  {target or ''}", flush=True)


########## 1. peak: the limit every MFU figure is divided by


def matmul_peak(dtype: torch.dtype, size: int, repeats: int) -> float:
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b  # warm
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - start)


########## 2. training throughput: our packed pipeline vs the run_clm way (concatenate and chunk)


class StepTimer(TrainerCallback):
    """Wall time of each optimizer step; the first `skip` are warm-up and not counted."""

    def __init__(self, skip: int):
        self.skip, self.times, self.start = skip, [], None

    def on_step_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self.start)

    def seconds_per_step(self) -> float:
        kept = self.times[self.skip:]
        return sum(kept) / len(kept)


def flops_per_token(model, seq_len: int) -> float:
    """PaLM's count (appendix B): 6 x non-embedding parameters + 12 x layers x width x sequence length."""
    config = model.config
    embedding = model.get_input_embeddings().weight.numel()
    return 6 * (model.num_parameters() - embedding) + 12 * config.num_hidden_layers * config.hidden_size * seq_len


def prepare(recipe: str, overrides: list[str]):
    parsed = parse_recipe([recipe, "--report_to", "none", "--eval_strategy", "no", "--save_strategy", "no", *overrides])
    config = load_config(parsed.model_args)
    block = resolve_block_size(parsed.data_args.max_seq_length, config)
    tokenizer = load_tokenizer(parsed.model_args, block)
    tunes, _ = clean_splits(load_raw_splits(parsed.data_args), parsed.data_args)
    packed, stats = tokenize_and_pack(tunes, tokenizer, block, parsed.data_args)
    return parsed, config, tokenizer, tunes, packed, stats, block


def chunked_like_run_clm(tunes, tokenizer, block: int):
    """transformers' run_clm: tokenize, concatenate everything, cut into blocks (tunes run into each other)."""
    eos = tokenizer.eos_token_id

    def group(batch):
        ids = [i for text in batch["text"] for i in [*tokenizer(text, add_special_tokens=False)["input_ids"], eos]]
        n = len(ids) // block * block
        return {"input_ids": [ids[i : i + block] for i in range(0, n, block)]}

    return tunes.map(group, batched=True, batch_size=None, remove_columns=tunes.column_names)


def train_throughput(parsed, config, tokenizer, dataset, collator, steps: int, real_share: float, block: int,
                     attention: str | None = None, trainer_class=Trainer):
    set_seed(parsed.training_args.seed)
    model = load_model(parsed.model_args, config, tokenizer)
    if attention:
        model.set_attn_implementation(attention)
    parsed.training_args.max_steps = steps
    timer = StepTimer(skip=2)
    trainer = trainer_class(model=model, args=parsed.training_args, train_dataset=dataset, data_collator=collator,
                            callbacks=[timer])
    trainer.train()
    args = parsed.training_args
    tokens_per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * block * real_share
    return tokens_per_step / timer.seconds_per_step(), model, trainer


# A stand-in that costs nothing, to time a pass without attention (and without a mask: none is registered).
AttentionInterface.register(NO_ATTENTION := "none_for_timing", lambda module, query, *args, **kwargs: (query.transpose(1, 2), None))


def attention_share(model, batches: list[dict]) -> float:
    """Share of forward+backward that attention takes, mask building included: the passes timed as they are
    and with attention replaced by the free stand-in."""
    def seconds() -> float:
        start = time.perf_counter()
        for batch in batches:
            model(**batch, use_cache=False).loss.backward()
        return time.perf_counter() - start

    batches = [{k: v.to(model.device) if torch.is_tensor(v) else v for k, v in batch.items()} for batch in batches]
    implementation = model.config._attn_implementation
    seconds()  # warm
    full = seconds()
    model.set_attn_implementation(NO_ATTENTION)
    free = seconds()
    model.set_attn_implementation(implementation)
    model.zero_grad(set_to_none=True)
    return (full - free) / full


def throughput(recipe: str, steps: int, bf16: str, peak: float):
    """Record tokens/s of our packed pipeline against run_clm's chunking and against packing with a dense
    block mask (stock SDPA), attention's share of a step, and MFU; return what later steps reuse."""
    overrides = ["--bf16", bf16, "--optim", "adamw_torch", "--gradient_accumulation_steps", "1",
                 "--output_dir", tempfile.mkdtemp()]
    parsed, config, tokenizer, tunes, packed, stats, block = prepare(recipe, overrides)
    real_share = 1 - stats["train"]["padding_share"]
    ours, model, trainer = train_throughput(parsed, config, tokenizer, packed["train"], default_data_collator,
                                            steps, real_share, block)
    # The same rows through stock SDPA: transformers builds a block-diagonal mask from the position_ids.
    dense, _, _ = train_throughput(parsed, config, tokenizer, packed["train"], default_data_collator,
                                   steps, real_share, block, attention="sdpa")
    chunked = chunked_like_run_clm(tunes["train"], tokenizer, block)
    plain, _, _ = train_throughput(parsed, config, tokenizer, chunked,
                                   DataCollatorForLanguageModeling(tokenizer, mlm=False), steps, 1.0, block)
    settings = {"recipe": recipe, "block": block, "batch": parsed.training_args.per_device_train_batch_size,
                "precision": "bf16" if bf16 == "true" else "fp32", "steps": steps, "parameters": model.num_parameters()}
    name = Path(recipe).stem
    record(f"{name}: train tokens/s, ours vs run_clm", ours, "tokens/s", baseline=plain, settings=settings,
           target=">= 1.0 at 512, >= 1.10 at 1024")
    record(f"{name}: train tokens/s, ours vs dense-mask packing", ours, "tokens/s", baseline=dense, settings=settings)
    loops = pseudo_loop_rows(tunes["train"], tokenizer, block, parsed.data_args, parsed.training_args.seed)
    penalised, _, _ = train_throughput(parsed, config, tokenizer, packed["train"], default_data_collator, steps, real_share,
                                       block, trainer_class=functools.partial(LoopPenaltyTrainer, loops=loops, weight=0.1))
    record(f"{name}: train tokens/s, loop penalty 0.1 vs none", penalised, "tokens/s", baseline=ours,
           settings={**settings, "note": "the same language-model tokens; half a batch of pseudo-loops more a step"})
    rows = packed["train"].shuffle(seed=0).select(range(3 * settings["batch"]))
    features = [rows[i] for i in range(len(rows))]
    batches = [default_data_collator(features[i : i + settings["batch"]]) for i in range(0, len(features), settings["batch"])]
    with torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=bf16 == "true"):
        ours_share = attention_share(model, batches)
        model.set_attn_implementation("sdpa")
        dense_share = attention_share(model, batches)
        model.set_attn_implementation(PACKED_SDPA)
    record(f"{name}: attention share of a step, ours vs dense mask", ours_share, "share", baseline=dense_share,
           settings={**settings, "note": "forward+backward against the same passes with a free stand-in"})
    record(f"{name}: MFU (of measured peak, same precision)", flops_per_token(model, block) * ours / peak, "share",
           settings=settings, target=">= 0.60")
    return parsed, config, tokenizer, tunes, packed, stats, block, ours, model, trainer


########## 4. optimizer memory


def optimizer_state_bytes(model, optim_name: str) -> int:
    import bitsandbytes as bnb

    cls = bnb.optim.AdamW8bit if optim_name == "adamw_8bit" else torch.optim.AdamW
    optimizer = cls(model.parameters(), lr=1e-4)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    optimizer.step()
    return sum(v.numel() * v.element_size() for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v))


def peak_rss_of_run(recipe: str, overrides: list[str], out: str) -> float:
    """Peak resident memory (MiB) of a separate short training run.

    Read from /proc/self/status VmHWM, which starts afresh at exec; Linux carries ru_maxrss over from
    the parent, so rusage would report this (large) benchmark process instead.
    """
    code = (
        "import re, sys, runpy; sys.argv = sys.argv[1:]\n"
        "try:\n    runpy.run_path('run_finetune.py', run_name='__main__')\n"
        "except SystemExit:\n    pass\n"
        "print('MAXRSS', re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1))"
    )
    result = subprocess.run([sys.executable, "-c", code, "run_finetune.py", recipe, *overrides, "--output_dir", out],
                            cwd=REPO, capture_output=True, text=True)
    line = [ln for ln in result.stdout.splitlines() if ln.startswith("MAXRSS")]
    if not line:
        raise RuntimeError(result.stderr[-2000:])
    return int(line[0].split()[1]) / 1024


########## 5. data: prepare + tokenize + pack, cold and warm

DATA_SCRIPT = """
import sys, time
from pathlib import Path
from finetune.data import prepare_music21, clean_splits, load_raw_splits
from finetune.args import DataArguments
from finetune.packing import tokenize_and_pack
from finetune.tokenizer import build_abc_tokenizer
start = time.perf_counter()  # after the imports, which a training run pays anyway
out = Path({data!r})
if not (out / "stats.json").exists():
    prepare_music21(out)
args = DataArguments(dataset_name_or_path=str(out))
tunes, _ = clean_splits(load_raw_splits(args), args)
tokenize_and_pack(tunes, build_abc_tokenizer(1024), 1024, args)
print("SECONDS", time.perf_counter() - start)
"""


def data_seconds(data_dir: str, cache_dir: str) -> float:
    env = {**os.environ, "HF_DATASETS_CACHE": cache_dir, "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}
    script = DATA_SCRIPT.format(data=data_dir)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    line = [ln for ln in result.stdout.splitlines() if ln.startswith("SECONDS")]
    if not line:
        raise RuntimeError(result.stderr[-2000:])
    return float(line[0].split()[1])


########## 6. evaluation and generation


def generation_tokens_per_second(model, tokenizer, new_tokens: int, use_cache: bool) -> float:
    model.eval()
    inputs = tokenizer("M:6/8\nK:D\n", return_tensors="pt")
    start = time.perf_counter()
    with torch.no_grad():
        model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                       use_cache=use_cache)
    return new_tokens / (time.perf_counter() - start)


########## 8. data at scale: a dry run's time and memory over a corpus 10x larger


def synthetic_corpus(tunes: int, path: Path) -> None:
    """`tunes` distinct copies of the bundled training tunes as JSONL: each copy gets a title of its own
    (kept by `keep_fields` ...T), so deduplication keeps them all."""
    from finetune.args import DataArguments
    from finetune.data import BUILTIN_DIR, load_raw_splits

    load_raw_splits(DataArguments())  # prepares the bundled corpus on first use
    source = [json.loads(line)["text"] for line in (BUILTIN_DIR / "train.jsonl").open()]
    with path.open("w") as f:
        f.writelines(json.dumps({"text": f"T:copy {i}\n{source[i % len(source)]}"}) + "\n" for i in range(tunes))


def tree_memory(pid: int) -> tuple[int, int]:
    """(Pss, anonymous Pss) in bytes of a process and its descendants, from /proc/*/smaps_rollup.

    Pss shares each page among the processes that map it, so forked workers are not counted twice, and
    the anonymous part leaves out the memory-mapped Arrow cache, which the kernel can drop at will.
    """
    import psutil

    total = anon = 0
    try:
        procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return 0, 0
    for proc in procs:
        try:
            rollup = Path(f"/proc/{proc.pid}/smaps_rollup").read_text().splitlines()[1:]
        except OSError:
            continue
        fields = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in rollup}
        total, anon = total + fields["Pss"], anon + fields["Pss_Anon"]
    return total, anon


def dry_run_at_scale(recipe: str, data: Path, cache: str) -> dict:
    """Seconds, peak memory and tokens of `run_finetune.py --dry_run` over `data` with a fresh datasets cache."""
    env = {**os.environ, "HF_DATASETS_CACHE": cache, "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}
    command = [sys.executable, "run_finetune.py", recipe, "--dry_run", "--dataset_name_or_path", str(data),
               "--keep_fields", "MLKRQPT", "--output_dir", tempfile.mkdtemp()]
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak, peak_anon = 0, 0
    while process.poll() is None:
        total, anon = tree_memory(process.pid)
        peak, peak_anon = max(peak, total), max(peak_anon, anon)
        time.sleep(0.05)
    seconds = time.perf_counter() - start
    stdout, stderr = process.communicate()
    if process.returncode:
        raise RuntimeError(stderr[-2000:])
    scale = {"": 1, "k": 1e3, "M": 1e6, "B": 1e9}
    tokens = sum(float(n) * scale[unit] for n, unit in re.findall(r"tunes, ([\d.]+)([kMB]?) tokens", stdout))
    return {"seconds": seconds, "peak": peak / 2**20, "peak_anon": peak_anon / 2**20, "tokens": tokens}


def data_at_scale(recipe: str, sizes: list[int]) -> None:
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for tunes in sizes:
            data = Path(tmp) / f"{tunes}.jsonl"
            synthetic_corpus(tunes, data)
            runs[tunes] = dry_run_at_scale(recipe, data, f"{tmp}/cache-{tunes}")
            data.unlink()
    small, large = runs[sizes[0]], runs[sizes[-1]]
    settings = {"tunes": sizes, "recipe": recipe, "note": "Pss of the process tree, sampled every 50 ms"}
    record(f"dry run over {sizes[-1]} tunes: peak memory vs {sizes[0]}", large["peak"], "MiB",
           baseline=small["peak"], settings=settings, target="<= 3 GiB and <= 1.5x")
    record(f"dry run over {sizes[-1]} tunes: peak anonymous memory vs {sizes[0]}", large["peak_anon"], "MiB",
           baseline=small["peak_anon"], settings={**settings, "note": "without the memory-mapped Arrow cache"})
    record(f"dry run over {sizes[-1]} tunes: seconds vs {sizes[0]}", large["seconds"], "s",
           baseline=small["seconds"], settings=settings, target=f"linear: ~{sizes[-1] / sizes[0]:g}x")
    record(f"dry run over {sizes[-1]} tunes: preparation tokens/s", large["tokens"] / large["seconds"], "tokens/s",
           settings={**settings, "note": "all tokens over the whole dry run, Python start-up included"},
           target=">= 1M on 2 cores")


def sampling_speed(model, tokenizer, constrain: str, max_repeats: int = 3) -> tuple[float, float]:
    """sample.py's generation (its sampling defaults), with or without the constraint or the loop limit: the
    tunes' new tokens a second, and generate's steps a second. A batch runs until its longest tune ends, so where
    tunes end early the first counts fewer tokens for the same steps; the second is the cost of a step, whatever
    the lengths."""
    prompts = ["M:6/8\nL:1/8\nK:D\n", "M:4/4\nL:1/8\nK:G\n", "M:3/4\nL:1/8\nK:Ador\n", "M:2/4\nL:1/16\nK:C\n"] * 2
    args = SampleArguments(max_new_tokens=256, constrain=constrain, max_repeats=max_repeats, seed=0)
    start = time.perf_counter()
    samples = generate_tunes(model, tokenizer, prompts, args)
    seconds = time.perf_counter() - start
    lengths = [len(tokenizer(prompt)["input_ids"]) for prompt in prompts]
    batches = prompt_batches(lengths, args, model.device)
    steps = sum(max(samples[i].new_tokens + samples[i].ended for i in batch) for batch in batches)
    return sum(s.new_tokens for s in samples) / seconds, steps / seconds


def results_markdown(device: str, results: list[dict]) -> str:
    """The results as the README quotes them."""
    def fmt(x):
        return "-" if x is None else f"{x:.4g}"

    rows = ([r["name"], fmt(r["value"]), r["unit"], fmt(r["baseline"]), fmt(r["ratio"]), r["target"] or ""] for r in results)
    return (f"Measured on {device}, {os.cpu_count()} CPUs, torch {torch.__version__}.\n\n"
            + markdown_table(["measurement", "value", "unit", "baseline", "ratio", "target"], rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="the short version: the quick recipe's model, fewer steps")
    parser.add_argument("--recipe", default="recipes/music_abc_quick.json", help="the model and data to measure")
    parser.add_argument("--out", default=None, help="results file (default benchmarks/results/<host>.json)")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per throughput run")
    parser.add_argument("--data-scale", default=None, metavar="N,N",
                        help="only measure a dry run's time and memory over N synthetic tunes each, e.g. 100000,1000000")
    args = parser.parse_args()
    steps = args.steps or (8 if args.quick else 20)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"{platform.node()}-cpu"
    name = device.replace(" ", "_") + ("-data-scale" if args.data_scale else "")
    out = Path(args.out or REPO / "benchmarks" / "results" / f"{name}.json")
    print(f"Benchmarks on {device} ({os.cpu_count()} CPUs), torch {torch.__version__}, recipe {args.recipe}", flush=True)
    run_start = time.perf_counter()
    if args.data_scale:
        data_at_scale(args.recipe, [int(n) for n in args.data_scale.split(",")])
        write_results(out, device, args.quick, run_start)
        return

    # 1. peak
    size, repeats = (1024, 3) if args.quick else (2048, 5)
    peak_fp32 = matmul_peak(torch.float32, size, repeats)
    record("peak matmul fp32", peak_fp32 / 1e9, "GFLOP/s", settings={"size": size})
    peak_bf16 = matmul_peak(torch.bfloat16, 256 if not torch.cuda.is_available() else size, 2)
    record("peak matmul bf16", peak_bf16 / 1e9, "GFLOP/s", baseline=peak_fp32 / 1e9,
           settings={"note": "ratio = bf16 / fp32; below 1 where the CPU has no native bf16"})

    # 2. training throughput of each model: the recipe's batch, fp32 unless bf16 is native, adamw_torch
    bf16 = "true" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "false"
    peak = peak_bf16 if bf16 == "true" else peak_fp32
    recipes = [(args.recipe, steps)]
    if not args.quick:
        recipes += [("recipes/music_abc.json", 8), ("recipes/llm_100m_cosine.json", 5)]
    for index, (recipe, recipe_steps) in enumerate(recipes):
        measured = throughput(recipe, recipe_steps, bf16, peak)
        if index == 0:
            parsed, config, tokenizer, tunes, packed, stats, block, ours, model, trainer = measured

    # 3. padding waste: packed rows vs pad-to-longest batches of whole tunes
    lengths = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) + 2 for t in tunes["train"]["text"]]
    lengths = [min(n, block) for n in lengths]
    order = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(0)).tolist()
    bs = parsed.training_args.per_device_train_batch_size
    batches = [[lengths[i] for i in order[k : k + bs]] for k in range(0, len(order), bs)]
    pad_longest = sum(max(b) * len(b) - sum(b) for b in batches) / sum(max(b) * len(b) for b in batches)
    record("padding share, packed vs pad-to-longest", stats["train"]["padding_share"], "share",
           baseline=pad_longest, settings={"batch": bs})

    # 4. optimizer memory
    fresh = load_model(parsed.model_args, config, tokenizer)
    eight, full = optimizer_state_bytes(fresh, "adamw_8bit"), optimizer_state_bytes(fresh, "adamw_torch")
    record("optimizer state, adamw_8bit vs adamw_torch", eight / 2**20, "MiB", baseline=full / 2**20,
           settings={"parameters": fresh.num_parameters()}, target="<= 0.27 (floor 0.25)")
    short = ["--max_steps", "3", "--bf16", bf16, "--report_to", "none", "--save_strategy", "no", "--eval_strategy", "no"]
    rss = {o: peak_rss_of_run(args.recipe, [*short, "--optim", o], tempfile.mkdtemp()) for o in ("adamw_8bit", "adamw_torch")}
    record("peak RSS of a 3-step run, adamw_8bit vs adamw_torch", rss["adamw_8bit"], "MiB", baseline=rss["adamw_torch"])

    # 5. data, cold (fresh corpus folder and datasets cache) and warm (both kept)
    with tempfile.TemporaryDirectory() as tmp:
        cold = data_seconds(f"{tmp}/corpus", f"{tmp}/cache")
        warm = data_seconds(f"{tmp}/corpus", f"{tmp}/cache")
    record("data prepare+tokenize+pack, warm vs cold", warm, "s", baseline=cold, target="cold <= 20 s, warm <= 2 s",
           settings={"note": "after Python imports; cold = fresh corpus folder and datasets cache"})

    # 6. evaluation and generation
    start = time.perf_counter()
    trainer.evaluate(packed["validation"])
    eval_rate = stats["validation"]["tokens_in_rows"] / (time.perf_counter() - start)
    record("eval tokens/s vs train tokens/s", eval_rate, "tokens/s", baseline=ours)
    model.set_attn_implementation("sdpa")  # the same rows through stock SDPA and a dense mask; generation too
    start = time.perf_counter()
    trainer.evaluate(packed["validation"])
    dense_eval_rate = stats["validation"]["tokens_in_rows"] / (time.perf_counter() - start)
    record("eval tokens/s, ours vs dense-mask packing", eval_rate, "tokens/s", baseline=dense_eval_rate)
    new_tokens = 128 if args.quick else 512
    cached = generation_tokens_per_second(model, tokenizer, new_tokens, True)
    uncached = generation_tokens_per_second(model, tokenizer, new_tokens, False)
    record(f"generate {new_tokens} tokens, KV cache vs none", cached, "tokens/s", baseline=uncached,
           target=">= 10x at 512 new tokens")
    (constrained, constrained_steps), (own, own_steps) = (sampling_speed(model, tokenizer, mode) for mode in ("meter", "none"))
    settings = {"note": "sample.py's defaults, 8 prompts, the benchmark's briefly trained model"}
    record("sample tunes, constrained (--constrain meter) vs own", constrained, "tokens/s", baseline=own,
           settings={**settings, "note": settings["note"] + "; the tunes' own tokens, fewer where they end early"})
    record("sample tunes, constrained vs own: generate steps/s", constrained_steps, "steps/s", baseline=own_steps,
           settings=settings, target=">= 0.7")
    _, unlimited_steps = sampling_speed(model, tokenizer, "none", max_repeats=0)
    record("sample tunes, own: generate steps/s, loop limit vs none", own_steps, "steps/s", baseline=unlimited_steps,
           settings=settings, target=">= 0.95")

    # 7. quality per compute: validation bits per character after a fixed number of training tokens
    parsed.training_args.max_steps = steps * 2
    set_seed(parsed.training_args.seed)
    quality_model = load_model(parsed.model_args, config, tokenizer)
    quality = Trainer(model=quality_model, args=parsed.training_args, train_dataset=packed["train"],
                      data_collator=default_data_collator)
    quality.train()
    loss = quality.evaluate(packed["validation"])["eval_loss"]
    val = stats["validation"]
    bpc = loss * (val["tokens_in_rows"] - val["tunes"]) / val["chars"] / math.log(2)
    trained = steps * 2 * parsed.training_args.per_device_train_batch_size * block * (1 - stats["train"]["padding_share"])
    record("validation bits per character after training", bpc, "bits/char",
           settings={"trained_tokens": int(trained), "learning_rate": parsed.training_args.learning_rate})

    write_results(out, device, args.quick, run_start)


def write_results(out: Path, device: str, quick: bool, run_start: float) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"device": device, "cpus": os.cpu_count(), "torch": torch.__version__,
                               "quick": quick, "seconds": time.perf_counter() - run_start,
                               "results": RESULTS}, indent=2) + "\n")
    out.with_suffix(".md").write_text(results_markdown(device, RESULTS))
    print(f"Wrote {out} ({time.perf_counter() - run_start:.0f} s, peak RSS "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB)")


if __name__ == "__main__":
    main()
