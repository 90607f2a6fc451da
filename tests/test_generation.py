"""Sampling. The loop limit: LoopLimitLogitsProcessor cuts a block of tokens repeated back to back more than
`max_repeats` times, touches real tunes as seldom as a second, independent count says, and never leaves a row
nothing to sample. The loops metric finds loops where they are written and seldom in real tunes; a real tune
counts as cut off exactly where a sample writing it is. The settings: min_p reaches generate; padded batches
write what each prompt writes alone; every command prints its help."""

import json
import shutil
from dataclasses import replace

import pytest
import torch
from conftest import TINY_RECIPE, run_cli
from transformers import AutoConfig, AutoModelForCausalLM, LogitsProcessor, LogitsProcessorList

from finetune.abc import header_length
from finetune.abc.check import analyse
from finetune.abc.constrain import MeterLogitsProcessor
from finetune.evaluation.token_metrics import load_metric
from finetune.generation import SampleArguments, cut_off_real_tunes, generate_tunes, prompt_from_tune
from finetune.loops import LoopLimitLogitsProcessor, in_a_loop, most_copies
from finetune.tokenizer import build_abc_tokenizer

TOKENIZER = build_abc_tokenizer(256)


@pytest.mark.integration
def test_real_tunes_are_touched_exactly_where_a_block_comes_a_fourth_time(corpus):
    """Teacher-forced over the held-out tunes (their first 512 tokens, batched), the processor masks a tune's own
    next token in exactly the tunes where the run-length count (`most_copies`, the loops metric's) finds a block
    more than 3 times running: about 1% (7 of 706 validation tunes here), so the limit leaves real music alone."""
    tunes = [TOKENIZER(text)["input_ids"][:512] for text in corpus["validation"]]
    length = max(map(len, tunes))
    # padding continues each tune with ids no tune holds, distinct per position, so it forms no loop
    vocabulary = len(TOKENIZER) + length
    ids = torch.tensor([t + list(range(len(TOKENIZER) + len(t), vocabulary)) for t in tunes])
    processor, touched = LoopLimitLogitsProcessor(max_repeats=3), set()
    for n in range(1, length):
        scores = processor(ids[:, :n], torch.zeros(len(tunes), vocabulary))
        masked = torch.isinf(scores.gather(1, ids[:, n, None]))[:, 0]
        touched |= {row for row in masked.nonzero().flatten().tolist() if n < len(tunes[row])}
    counted = {row for row, t in enumerate(tunes) if most_copies(t) > 3}
    print(f"touched {len(touched)} of {len(tunes)} real tunes")
    assert touched == counted
    assert 0 < len(touched) <= 0.03 * len(tunes)


class Echo(LogitsProcessor):
    """A model caught in a loop: every row wants to write again the token `period` before."""

    def __init__(self, period: int):
        self.period = period

    def __call__(self, input_ids, scores):
        return scores.scatter_add(1, input_ids[:, -self.period, None], torch.full_like(scores[:, :1], 50.0))


HEADER = "M:6/8\nL:1/8\nK:D\n"


def fresh_model():
    """The tiny recipe's model, untrained, the same every time."""
    recipe = json.loads(TINY_RECIPE.read_text())["model_config"]
    config = AutoConfig.for_model("llama", vocab_size=len(TOKENIZER), bos_token_id=TOKENIZER.bos_token_id,
                                  eos_token_id=TOKENIZER.eos_token_id, pad_token_id=TOKENIZER.pad_token_id, **recipe)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval()


def written(body: str, *processors, new_tokens: int = 120) -> list[str]:
    """Greedy generation by a fresh tiny model through `processors`, prompted with HEADER + `body`: two rows, each
    the body and what follows."""
    model = fresh_model()
    ids = torch.tensor([TOKENIZER(HEADER + body)["input_ids"]] * 2)
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=new_tokens,
                         logits_processor=LogitsProcessorList(processors), pad_token_id=TOKENIZER.pad_token_id)
    return [body + TOKENIZER.decode(row[ids.shape[1]:], skip_special_tokens=True) for row in out]


def copies(text: str) -> float:
    return most_copies(TOKENIZER(text)["input_ids"][1:])


def test_a_model_caught_in_a_loop_is_cut_out_of_it():
    assert all(copies(row) > 12 for row in written("A|d2d dcd|", Echo(10)))  # the loop, unbroken
    for row in written("A|d2d dcd|", Echo(10), LoopLimitLogitsProcessor(max_repeats=3)):
        assert 2.9 < copies(row) <= 3  # three copies, then it must write something else, and again


def test_under_the_meter_the_loop_is_cut_too_and_the_bars_stay_whole():
    """sample.py's order: the loop limit, then the meter, which chooses among the tokens left. Keeping one token
    (as top-p does where the model is sure), the meter would otherwise hand the limit the loop's token alone."""
    def meter():
        return MeterLogitsProcessor(TOKENIZER, max_new_tokens=120, keep=1)

    assert all(copies(row) >= 10 for row in written("d2d dcd|", Echo(8), meter()))  # a loop on the meter, then the end
    for row in written("d2d dcd|", Echo(8), LoopLimitLogitsProcessor(max_repeats=3), meter()):
        report = analyse(HEADER + row)
        assert 2.9 < copies(row) <= 3 and report.bars_off == 0, row


def test_the_only_token_a_row_has_left_is_never_taken():
    """After the mask of a processor before it, the loop's next token may be the one allowed: it stays."""
    block = TOKENIZER("d2d dcd|A|")["input_ids"][1:]
    ids = torch.tensor([block * 3] * 2)
    scores = torch.zeros(2, len(TOKENIZER))
    scores[0, :] = float("-inf")
    scores[0, block[0]] = 0.0  # row 0 may only continue the loop
    out = LoopLimitLogitsProcessor(max_repeats=3)(ids, scores)
    assert out[0, block[0]] == 0 and torch.isinf(out[1, block[0]]) and torch.isfinite(out[1]).sum() == len(TOKENIZER) - 1


@pytest.mark.integration
def test_the_loops_metric_finds_loops_in_real_tunes_only_where_one_is_written_in(corpus):
    """The metric can fail both ways: real tunes score about 1%; the same tunes with one of their lines (8 to 128
    characters) written four times running score 1, and twice, as tunes often do, as before."""
    loops = load_metric("loops")
    tunes = corpus["validation"][:300]
    real = loops.compute(predictions=tunes)["loops"]
    assert 0 < real <= 0.03

    def repeated(tune: str, times: int) -> str:
        line = next(line for line in tune.split("\n")[::-1] if 8 <= len(line) + 1 <= 128)
        return tune.replace(line + "\n", (line + "\n") * times, 1)

    fit = [t for t in tunes if any(8 <= len(line) + 1 <= 128 for line in t.split("\n")) and not in_a_loop(t)]
    assert len(fit) > 250
    assert loops.compute(predictions=[repeated(t, 4) for t in fit])["loops"] == 1.0
    assert loops.compute(predictions=[repeated(t, 2) for t in fit])["loops"] <= real


class Scripted(LogitsProcessor):
    """A model that writes exactly `ids` after a prompt `start` tokens wide, then `</s>`."""

    def __init__(self, ids: list[int], start: int):
        self.ids, self.start = ids, start

    def __call__(self, input_ids, scores):
        n = input_ids.shape[1] - self.start
        forced = torch.full_like(scores, float("-inf"))
        forced[:, self.ids[n] if n < len(self.ids) else TOKENIZER.eos_token_id] = 0.0
        return forced


def test_a_real_tune_counts_as_cut_off_exactly_where_a_sample_writing_it_is(corpus):
    """The reference row's truncation: a real tune ends within the budget a sample of its prompt gets, or is cut off,
    as generate_tunes decides it for a model that writes that tune (budgets one token either side of its need)."""
    model = fresh_model()
    real = next(t for t in corpus["validation"] if 100 < len(t) < 200)
    prompt = prompt_from_tune(real)
    tune = prompt + real[header_length(real):]  # the real tune as a sample of its prompt would write it
    music = TOKENIZER(tune[len(prompt):], add_special_tokens=False)["input_ids"]
    width = len(TOKENIZER(prompt)["input_ids"])  # <s> + prompt
    generate = model.generate

    def writes_the_tune(**kwargs):
        return generate(**{**kwargs, "logits_processor": LogitsProcessorList([*kwargs["logits_processor"], Scripted(music, width)])})

    model.generate = writes_the_tune
    verdicts = []
    for budget in (len(music), len(music) + 1):  # the music and `</s>` need len(music) + 1 new tokens
        args = SampleArguments(max_new_tokens=budget, max_repeats=0, constrain="none")
        [sample] = generate_tunes(model, TOKENIZER, [prompt], args)
        assert sample.text == tune if sample.ended else tune.startswith(sample.text)
        verdicts.append((sample.ended, cut_off_real_tunes(TOKENIZER, 512, [prompt], [tune], args)[0]))
    assert verdicts == [(False, True), (True, False)]


def test_min_p_keeps_the_tokens_near_the_likeliest_one():
    """min_p 0.999 leaves only the likeliest token (greedy decoding's tunes); 0 leaves sampling free."""
    model = fresh_model()
    with torch.no_grad():  # an untrained model's next-token odds are near uniform: spread them out
        model.lm_head.weight.mul_(20)

    def tunes(**settings):
        args = SampleArguments(num_samples=3, max_new_tokens=8, max_repeats=0, constrain="none", temperature=1.0, **settings)
        return [s.text for s in generate_tunes(model, TOKENIZER, [HEADER] * 3, args)]

    greedy = tunes(top_k=1, top_p=1.0)
    assert tunes(top_k=0, top_p=1.0, min_p=0.999) == greedy
    assert tunes(top_k=0, top_p=1.0, min_p=0.0) != greedy


@pytest.mark.parametrize("constrain", ["none", "meter"])
def test_prompts_of_any_length_share_a_padded_batch_and_write_what_each_would_alone(constrain):
    """--batching padded (an accelerator's default): one generate call for prompts of three lengths, padded on the
    left; greedy, each tune is the one its prompt writes alone (positions and the processors' rows skip the
    padding), and a tune that does not end stops at its own budget, the rest of the context after its prompt,
    whichever prompts share its batch. On the CPU, auto keeps one call per prompt length."""
    model = fresh_model()
    with torch.no_grad():  # an untrained model's next-token odds are near uniform: spread them, so no tie decides
        model.lm_head.weight.mul_(20)
    model.config.max_position_embeddings = 64  # the context that sets the budgets: short ones, for a quick test
    prompts = ["M:3/4\nK:Am\n", "M:4/4\nL:1/8\nR:reel\nK:G\n", HEADER]
    args = SampleArguments(top_k=1, top_p=1.0, temperature=1.0, constrain=constrain, batching="padded", batch_size=3)
    calls = []
    generate = model.generate
    model.generate = lambda **kwargs: calls.append(kwargs["input_ids"].shape[0]) or generate(**kwargs)
    together = generate_tunes(model, TOKENIZER, prompts, args)
    assert calls == [3]
    alone = [generate_tunes(model, TOKENIZER, [prompt], args)[0] for prompt in prompts]
    assert [s.text for s in together] == [s.text for s in alone]
    context = model.config.max_position_embeddings
    budgets = [context - len(TOKENIZER(prompt)["input_ids"]) for prompt in prompts]  # <s> + prompt, no </s>
    assert len(set(budgets)) == 3
    for sample, budget in zip(together, budgets):
        assert sample.new_tokens < budget if sample.ended else sample.new_tokens == budget
    calls.clear()
    by_length = generate_tunes(model, TOKENIZER, prompts, replace(args, batching="auto"))
    assert calls == [1, 1, 1] and [s.text for s in by_length] == [s.text for s in together]


@pytest.mark.parametrize("script", ["sample", "evaluate_checkpoints"])  # the two that read SampleArguments
def test_every_command_prints_its_help(script, capsys):
    """argparse formats each help text with %: a bare % in one (`1.1% of`) made --help raise."""
    code, stdout, stderr = run_cli(["--help"], capsys, script)
    assert code == 0 and "usage" in stdout.lower() and "--max_repeats" in stdout, stderr[-1000:]


def test_midi_is_written_for_a_real_tune_and_a_slow_one_is_given_up_with_the_reason(tmp_path):
    from finetune.generation import write_midi

    assert write_midi("X:1\nM:2/4\nL:1/8\nK:D\nABcd|efga|\n", tmp_path / "a.mid", writer="music21") is None
    assert (tmp_path / "a.mid").stat().st_size > 0
    long_tune = "X:1\nM:6/8\nL:1/8\nK:D\n" + "|:ABc def:|\n" * 300
    assert write_midi(long_tune, tmp_path / "b.mid", seconds=0.05, writer="music21").startswith("_TooSlow: gave up after 0.05 s")


@pytest.mark.skipif(shutil.which("abc2midi") is None, reason="abc2midi not installed (Debian: apt-get install abcmidi)")
def test_abc2midi_writes_the_midi_of_tunes_music21_cannot_expand(tmp_path):
    """A repeat opened and never closed, as a model writes it and abc2midi passes it: music21 gives up."""
    from finetune.generation import write_midi

    tune = "X:1\nM:4/4\nL:1/8\nK:G\nD2 | G2B2d2cB | A2A2G2z2 || |:B2d2g2e2 | d4z2 |]\n"
    assert write_midi(tune, tmp_path / "m.mid", writer="music21").startswith("ExpanderException")
    assert write_midi(tune, tmp_path / "a.mid") is None and (tmp_path / "a.mid").stat().st_size > 0
    assert write_midi("no tune at all", tmp_path / "a.mid").startswith("abc2midi wrote no MIDI")
    assert not (tmp_path / "a.mid").exists()  # the earlier file is gone, not passed off as this one's


def test_best_of_keeps_each_prompts_best_candidate_by_the_rerank():
    """best_of n samples every prompt n times and keeps, per prompt, the candidate the rerank puts first (ended,
    a whole tune, valid, fewest faults, fewest bars off), the earliest of equals; a count below 1 is refused."""
    from finetune.errors import UserError
    from finetune.generation import rerank_key

    model = fresh_model()
    prompts = [HEADER, "M:4/4\nL:1/8\nK:G\n", "M:3/4\nL:1/8\nK:Ador\n"]
    args = SampleArguments(max_new_tokens=60, constrain="meter")
    best = generate_tunes(model, TOKENIZER, prompts, replace(args, best_of=4))
    candidates = generate_tunes(model, TOKENIZER, [p for p in prompts for _ in range(4)], args)
    assert len(best) == 3
    for i, chosen in enumerate(best):
        mine = candidates[4 * i : 4 * i + 4]
        keys = [rerank_key(s) for s in mine]
        assert chosen.prompt == prompts[i]
        assert chosen.text == mine[keys.index(max(keys))].text
    assert len({rerank_key(s) for s in candidates}) > 1  # the rerank had something to choose between
    with pytest.raises(UserError, match="best_of must be at least 1, not 0"):
        SampleArguments(best_of=0)


def test_the_rerank_prefers_a_whole_tune_to_a_fragment_the_checker_passes():
    """Ranked by the checker first, best-of-n picked fragments: short tunes pass it more often."""
    from finetune.abc.check import analyse
    from finetune.generation import Sample, rerank_key

    header = "M:4/4\nL:1/4\nK:D\n"
    fragment = header + "D F A d|d A F D|]\n"
    tune = header + "D F A d|c e A2|" * 3 + "d c B A|d A F D|]\n"
    off_meter = header + "D F A d e|c e A2 B|" * 4 + "|]\n"
    assert analyse(fragment).valid and analyse(tune).valid and not analyse(off_meter).valid
    def key(text, ended=True):
        return rerank_key(Sample(prompt=header, text=text, ended=ended, new_tokens=len(text)))
    assert key(tune) > key(fragment) and key(off_meter) > key(fragment)
    assert key(tune) > key(off_meter) and key(fragment) > key(tune, ended=False)
