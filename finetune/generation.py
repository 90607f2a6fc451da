"""Generate tunes from a checkpoint with the KV cache, and write them as .abc and .mid files.

Sampling settings come from the flags, else from the run's recipe (its `sampling` key), else SAMPLING_DEFAULTS:
TunesFormer's and NotaGen's for character-level ABC decoders (temperature 1.2, top_k 8, top_p 0.8). Other
settings reported in the field: top_p 0.9 at temperature 1.0 (Text-to-Music); temperature 0.2, top_k 40, top_p 0.9
(ChatMusician, a 7B text model).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import shutil
import signal
import tempfile
import threading
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

import torch
from transformers import (
    LogitsProcessorList,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    StoppingCriteria,
    StoppingCriteriaList,
    set_seed,
)

from .abc import header_length
from .abc.check import analyse, run_abc2midi
from .abc.constrain import MeterLogitsProcessor
from .abc.measures import Typicality, fragment, music_flags, tune_music
from .args import SAMPLING_DEFAULTS
from .data import quiet_logger
from .errors import UserError
from .loops import LOOP_MIN_TOKENS, LOOP_REPEATS, LoopLimitLogitsProcessor
from .model import context_length
from .packing import pad_token_id, tokenize_batch

# Header fields a prompt carries: the ones that shape the music. R: and T: join them when the recipe keeps
# them in training text (DataArguments.keep_fields), since only then has the model learnt to follow them.
PROMPT_FIELDS = "MLK"
CONDITIONING_FIELDS = "RT"
# music21 turns a real tune into MIDI in well under a second.
MIDI_SECONDS = 10.0
_FROM_RECIPE = "Unset: the run's recipe's 'sampling', else"


@dataclass
class SampleArguments:
    num_samples: int = field(default=8, metadata={"help": "How many tunes to generate."})
    # The four settings of how to sample: unset (None), each comes from the run's recipe, else SAMPLING_DEFAULTS
    # (`settled`), so that a recipe can say how its model samples best.
    temperature: float | None = field(
        default=None, metadata={"help": f"Softmax temperature. {_FROM_RECIPE} {SAMPLING_DEFAULTS['temperature']} (TunesFormer, NotaGen)."}
    )
    top_k: int | None = field(
        default=None,
        metadata={"help": f"Sample among the k likeliest tokens; 0 turns it off. {_FROM_RECIPE} {SAMPLING_DEFAULTS['top_k']} (TunesFormer)."},
    )
    top_p: float | None = field(
        default=None, metadata={"help": f"Nucleus sampling mass; 1.0 turns it off. {_FROM_RECIPE} {SAMPLING_DEFAULTS['top_p']} (TunesFormer)."}
    )
    min_p: float | None = field(
        default=None,
        metadata={"help": "Drop tokens less likely than this share of the likeliest one (after top-k and top-p); 0 "
                  f"turns it off. {_FROM_RECIPE} {SAMPLING_DEFAULTS['min_p']}."},
    )
    max_new_tokens: int | None = field(
        default=None, metadata={"help": "Token budget per tune after the prompt; default: the rest of the model's context."}
    )
    seed: int = field(default=3407, metadata={"help": "Seed for sampling; the same seed gives the same tunes."})
    batch_size: int = field(default=32, metadata={"help": "Tunes generated at once (see --batching)."})
    batching: Literal["auto", "padded", "length"] = field(
        default="auto",
        metadata={"help": "padded: prompts of any length share a batch, padded on the left (a GPU's step costs about "
                  "the same for 1 row or 32: one generate call, not one per prompt length); length: prompts of one "
                  "token length share a batch (on a CPU every row costs compute until its batch's longest tune "
                  "ends); auto: padded on an accelerator, length on the CPU."},
    )
    max_repeats: int = field(
        default=LOOP_REPEATS,
        metadata={"help": f"Write a block of {LOOP_MIN_TOKENS} or more tokens at most this many times back to back, "
                  "so that a loop is cut (LoopLimitLogitsProcessor; real tunes seldom repeat a block more often); 0 "
                  "turns it off."},
    )
    best_of: int = field(
        default=1,
        metadata={"help": "Sample this many tunes per prompt and keep the best (best-of-n): one that ended before one "
                  "cut off, then a whole tune before a fragment of a few bars, then one the checker passes, then one "
                  "with the fewest faults a listener hears (a bar looped, no return to the tonic, notes outside the "
                  "key; finetune/abc/measures.py), then the nearest to the run's training tunes in pitch, interval, "
                  "length, range and onset, then the fewest bars off the meter. Costs n times the sampling."},
    )
    constrain: Literal["meter", "none"] = field(
        default="meter",
        metadata={"help": "meter: mask tokens that would break ABC syntax or the meter (finetune/abc/constrain.py); none: no such mask "
                  "(with --max_repeats 0 too: the model's own tunes, nothing masked)."},
    )

    def __post_init__(self):
        """Every bad setting at once, as one line."""
        found = []
        if self.num_samples < 1:
            found.append(f"num_samples must be at least 1, not {self.num_samples}")
        found += sampling_problems({k: getattr(self, k) for k in SAMPLING_DEFAULTS if getattr(self, k) is not None})
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            found.append(f"max_new_tokens must be at least 1, not {self.max_new_tokens}")
        if self.max_repeats < 0 or self.max_repeats == 1:
            found.append(f"max_repeats must be 0 (off) or at least 2, not {self.max_repeats}")
        if self.batch_size < 1:
            found.append(f"batch_size must be at least 1, not {self.batch_size}")
        if self.best_of < 1:
            found.append(f"best_of must be at least 1, not {self.best_of}")
        if found:
            raise UserError("; ".join(found))

    def settled(self, recipe_sampling: dict | None = None) -> SampleArguments:
        """These arguments with each unset sampling setting taken from a recipe's `sampling`, else SAMPLING_DEFAULTS."""
        if problems := sampling_problems(recipe_sampling or {}):
            raise UserError(f"the run's recipe, 'sampling': {'; '.join(problems)}; fix it in its recipe.json")
        chosen = {**SAMPLING_DEFAULTS, **(recipe_sampling or {})}
        return replace(self, **{k: v for k, v in chosen.items() if getattr(self, k) is None})


def sampling_problems(settings: dict) -> list[str]:
    """What is wrong with `settings`, a dict of some of SAMPLING_DEFAULTS' keys (a recipe's `sampling`, or flags)."""
    found = [f"unknown setting '{k}' (the settings: {', '.join(SAMPLING_DEFAULTS)})" for k in settings if k not in SAMPLING_DEFAULTS]
    numbers = {}
    for key, value in settings.items():
        if key not in SAMPLING_DEFAULTS:
            continue
        kind = int if key == "top_k" else (int, float)
        if isinstance(value, bool) or not isinstance(value, kind):
            found.append(f"{key} must be {'a whole number' if key == 'top_k' else 'a number'}, not {value!r}")
        else:
            numbers[key] = value
    # Chained comparisons refuse NaN too, which fails every comparison.
    if "temperature" in numbers and not 0 < numbers["temperature"] < math.inf:
        found.append(f"temperature must be a number above 0, not {numbers['temperature']}")
    if "top_k" in numbers and numbers["top_k"] < 0:
        found.append(f"top_k must be 0 (off) or more, not {numbers['top_k']}")
    if "top_p" in numbers and not 0 < numbers["top_p"] <= 1:
        found.append(f"top_p must be in (0, 1], not {numbers['top_p']}")
    if "min_p" in numbers and not 0 <= numbers["min_p"] < 1:
        found.append(f"min_p must be in [0, 1), not {numbers['min_p']}")
    return found


@dataclass(frozen=True)
class Sample:
    prompt: str
    text: str  # the whole tune: prompt and continuation
    ended: bool  # the model closed the tune within the budget (False: truncated)
    new_tokens: int


def prompt_fields(keep_fields: str) -> str:
    """The header fields to prompt with, for a model trained on tunes keeping `keep_fields`."""
    return PROMPT_FIELDS + "".join(f for f in CONDITIONING_FIELDS if f in keep_fields)


def prompt_from_tune(tune: str, fields: str = PROMPT_FIELDS) -> str:
    """The tune's header lines for `fields`, in the tune's order, ending with its K: line and a newline."""
    header = tune[: header_length(tune)]
    lines = [line for line in header.split("\n") if len(line) > 1 and line[1] == ":" and line[0] in fields]
    return "\n".join(lines) + "\n"


def parse_prompt(prompt: str) -> str:
    r"""A prompt from the command line: `\n` written as two characters becomes a newline; one is added at the end.

    Bytes that are not UTF-8 reach Python's argv as lone surrogates, which no tokenizer encodes: they become
    U+FFFD, the replacement character, as a UTF-8 decoder would write them.
    """
    try:
        prompt = prompt.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:  # a surrogate that stands for no byte
        prompt = prompt.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    prompt = prompt.replace("\\n", "\n")
    return prompt if prompt.endswith("\n") or not prompt else prompt + "\n"


def _encode(tokenizer: PreTrainedTokenizerBase, prompt: str) -> list[int]:
    """`<s>` + the prompt, tokenized by training's own function, without the end-of-tune token."""
    return tokenize_batch({"text": [prompt]}, tokenizer)["input_ids"][0][:-1]


@torch.inference_mode()
def generate_tunes(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[str], args: SampleArguments,
    typical: Typicality | None = None,
) -> list[Sample]:
    """One sample per prompt, in order, with the KV cache on (generate's default); the seed makes the whole call
    repeatable on one kind of device. Batches follow `args.batching` (see prompt_batches); each row has its own
    budget, the rest of the context after its prompt or `max_new_tokens`, whichever prompts share its batch.
    Sampling settings still unset (see `SampleArguments.settled`) are SAMPLING_DEFAULTS. Best of n ranks each
    prompt's candidates by rerank_key, with `typical` (the training tunes' Typicality) where it is given."""
    args = args.settled()
    if args.best_of > 1:  # every prompt n times, then each prompt's best candidate
        candidates = generate_tunes(model, tokenizer, [p for p in prompts for _ in range(args.best_of)],
                                    replace(args, best_of=1))
        return [max(candidates[i : i + args.best_of], key=lambda sample: rerank_key(sample, typical))
                for i in range(0, len(candidates), args.best_of)]
    set_seed(args.seed)
    encoded = [_encode(tokenizer, prompt) for prompt in prompts]
    context = context_length(model.config)
    longest = max(map(len, encoded), default=0)
    if context - longest < 1:
        raise UserError(f"a prompt of {longest} tokens leaves no room in the model's context of {context}; shorten it")
    pad = pad_token_id(tokenizer)
    results: list[Sample | None] = [None] * len(prompts)
    for batch in prompt_batches([len(ids) for ids in encoded], args, model.device):
        width = max(len(encoded[i]) for i in batch)
        budgets = [token_budget(args, context, len(encoded[i])) for i in batch]
        input_ids = torch.tensor([[pad] * (width - len(encoded[i])) + encoded[i] for i in batch], device=model.device)
        # from the lengths, not from the ids: a GPT-2 style tokenizer's pad is its `<s>` too
        attention_mask = torch.tensor([[0] * (width - len(encoded[i])) + [1] * len(encoded[i]) for i in batch],
                                      device=model.device)
        processors = LogitsProcessorList()
        if args.max_repeats:  # first: the meter's mask then chooses among the tokens that leave the loop
            processors.append(LoopLimitLogitsProcessor(args.max_repeats))
        if args.constrain == "meter":  # one per batch: it follows each row's tune as it is written
            # top-k then samples among the k likeliest allowed tokens, exactly as it would without the mask
            keep = args.top_k if args.top_k else 64
            processors.append(MeterLogitsProcessor(
                tokenizer, max_new_tokens=budgets, keep=keep, temperature=args.temperature, top_p=args.top_p
            ))
        # generate reminds that the batch outgrew max_position_embeddings: a padded row's tensor is longer than
        # its tune, whose own positions (counted from the attention mask) stay inside the context
        with quiet_logger("transformers.generation.stopping_criteria", logging.ERROR):
            output = model.generate(
                input_ids=input_ids,
                logits_processor=processors,
                stopping_criteria=StoppingCriteriaList([RowBudgets(width, budgets)]),
                attention_mask=attention_mask,
                do_sample=True,
                temperature=args.temperature,
                top_k=args.top_k,
                top_p=args.top_p,
                min_p=args.min_p or None,
                max_new_tokens=max(budgets),
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=pad,
                use_cache=True,
            )
        for row, i in enumerate(batch):
            new = output[row, width : width + budgets[row]].tolist()
            ended = tokenizer.eos_token_id in new
            if ended:
                new = new[: new.index(tokenizer.eos_token_id)]
            text = prompts[i] + tokenizer.decode(new, skip_special_tokens=True)
            results[i] = Sample(prompt=prompts[i], text=text, ended=ended, new_tokens=len(new))
    return results


def rerank_key(sample: Sample, typical: Typicality | None = None) -> tuple:
    """How best-of-n ranks a prompt's candidates (the highest wins; ties go to the earliest): ended, then a tune
    rather than a fragment, then passed by the checker, then the fewest faults a listener hears, then, given
    `typical`, the nearest to real tunes in pitch, interval, length, range and onset, then the fewest bars off the
    meter. Length comes before the checker, which short tunes pass more often: ranked by validity first, best-of-n
    picks fragments."""
    report, music = analyse(sample.text), tune_music(sample.text)
    nearness = -typical.distance(music) if typical else 0.0
    return sample.ended, not fragment(music), report.valid, -len(music_flags(music)), nearness, -report.bars_off


def token_budget(args: SampleArguments, context: int, prompt_tokens: int) -> int:
    """How many new tokens a tune may write after a prompt of `prompt_tokens` tokens (`<s>` included)."""
    return min(args.max_new_tokens or context, context - prompt_tokens)


def cut_off_real_tunes(tokenizer: PreTrainedTokenizerBase, context: int, prompts: list[str], tunes: list[str],
                       args: SampleArguments) -> list[bool]:
    """Whether each real tune, written after its prompt, would run past the budget generate_tunes gives that
    prompt: its tokens and `</s>` (as training tokenizes them) outnumber the prompt's plus the budget."""
    lengths = tokenize_batch({"text": tunes}, tokenizer)["length"]
    prompt_lengths = [len(_encode(tokenizer, prompt)) for prompt in prompts]
    return [n - p > token_budget(args, context, p) for n, p in zip(lengths, prompt_lengths)]


def prompt_batches(lengths: list[int], args: SampleArguments, device: torch.device) -> list[list[int]]:
    """generate_tunes' batches of prompts (their indices) by token length, shortest first: `args.batch_size` at a
    time (padded), or of one length each (by length); `args.batching` "auto" pads on an accelerator.

    On a GPU a step costs about the same for 1 row or 32, so fewer generate calls win (held-out prompts come in
    many lengths). On a CPU every row costs compute until its batch's longest tune ends, and one tune in a loop
    holds the batch's finished rows to the budget (docs/sampling.md).
    """
    size, order = args.batch_size, sorted(range(len(lengths)), key=lengths.__getitem__)
    if args.batching == "padded" or (args.batching == "auto" and device.type != "cpu"):
        return [order[start : start + size] for start in range(0, len(order), size)]
    groups: dict[int, list[int]] = {}
    for i in order:
        groups.setdefault(lengths[i], []).append(i)
    return [group[start : start + size] for group in groups.values() for start in range(0, len(group), size)]


class RowBudgets(StoppingCriteria):
    """Stops each row of a left-padded batch once it has written its own budget of new tokens (generate's
    `max_new_tokens` is one number for the batch: the largest budget)."""

    def __init__(self, prompt_width: int, budgets: list[int]):
        self.prompt_width, self.budgets = prompt_width, torch.tensor(budgets)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        self.budgets = self.budgets.to(input_ids.device)  # once: after that, `to` is a no-op
        return self.budgets <= input_ids.shape[1] - self.prompt_width


def as_abc_file(text: str, index: int, title: str) -> str:
    """A standalone ABC file: X: and T: lines first, as abc2midi and other tools expect."""
    return f"X:{index}\nT:{title}\n{text.rstrip()}\n"


class _TooSlow(BaseException):
    """A BaseException, so that no `except Exception` inside music21 can swallow it and run on past the limit."""


@contextlib.contextmanager
def _time_limit(seconds: float):
    """Raise _TooSlow after `seconds` (main thread only; elsewhere no limit)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum, frame):
        raise _TooSlow(f"gave up after {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    # It fires again every `seconds` until cleared: Python swallows an exception raised while a finalizer
    # (`__del__`) runs, and garbage collection may run one just when the first alarm comes.
    signal.setitimer(signal.ITIMER_REAL, seconds, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def write_midi(text: str, path: Path, seconds: float = MIDI_SECONDS, writer: str = "auto") -> str | None:
    """Write the tune as MIDI; return None, or why it could not be written.

    `writer` "auto" takes abc2midi when it is on PATH: the checker's own program, so every tune it passes plays
    (music21 could not expand the repeats of, or threw on, 30 of 64 tunes the CPU recipe's model wrote and
    abc2midi passed); else music21.
    """
    if writer == "abc2midi" or writer == "auto" and shutil.which("abc2midi"):
        return _abc2midi_midi(text, path, seconds)
    return _music21_midi(text, path, seconds)


def _abc2midi_midi(text: str, path: Path, seconds: float) -> str | None:
    path.unlink(missing_ok=True)  # a file left from an earlier run must not pass for this one
    with tempfile.TemporaryDirectory() as tmp:
        out = run_abc2midi(text, Path(tmp), "-o", str(path.resolve()), "-silent", seconds=seconds)
    if out is None:
        return f"abc2midi gave up after {seconds:g} s"
    if not path.exists() or path.stat().st_size == 0:
        said = (out.stdout + out.stderr).strip().splitlines()
        return f"abc2midi wrote no MIDI: {said[-1][:120] if said else f'exit {out.returncode}'}"
    return None


def _music21_midi(text: str, path: Path, seconds: float) -> str | None:
    import music21

    try:
        # music21 prints a warning per note it has to guess; the checker reports those problems instead.
        # A garbled tune can send its repeat expansion into minutes of work, hence the time limit.
        with _time_limit(seconds), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            score = music21.converter.parse(text, format="abc")
            score.write("midi", fp=str(path))
    except (Exception, _TooSlow) as e:  # music21's lenient parser fails on broken tunes in many ways; that is a finding
        return f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"
    return None


def write_samples(samples: list[Sample], out_dir: Path, label: str, checks: list[dict] | None = None) -> list[dict]:
    """`NNN.abc` and `NNN.mid` per sample, plus samples.jsonl with every sample and what happened to it.

    `checks`, the checker's result for each sample (`abc.check.check_tunes`), goes into its record: whether it
    is valid, and why not.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    records = []
    for i, sample in enumerate(samples, start=1):
        abc = as_abc_file(sample.text, i, f"{label} sample {i}")
        (out_dir / f"{i:03d}.abc").write_text(abc, encoding="utf-8", errors="replace")
        midi_error = write_midi(abc, out_dir / f"{i:03d}.mid")
        check = checks[i - 1] if checks else {}
        records.append(
            {"index": i, **asdict(sample), "abc": f"{i:03d}.abc", "midi": None if midi_error else f"{i:03d}.mid", "midi_error": midi_error, **check}
        )
    tmp = out_dir / "samples.jsonl.tmp"
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    os.replace(tmp, out_dir / "samples.jsonl")
    return records
