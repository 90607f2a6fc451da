"""Musical measures of a set of tunes against real ones: their distribution, their form and their tonality.

    python -m finetune.abc.measures REAL GENERATED        # each a .abc tune book or a .jsonl with a `text` field

prints one JSON object: `overlapped_area`, the mean over the distribution features of how much GENERATED's
distance to REAL overlaps REAL's distance to itself (1.0: alike), and beside it every measure of both sets.

Everything is read by the one reader (reader.py, with `notes` recorded), so pitches, lengths and bars are the
checker's; nothing needs a pretrained model. The measures are those of the field:

- **Distribution**, after Yang & Lerch (2018), "On the evaluation of generative models in music" (mgeval): per tune,
  a pitch-class histogram relative to the tonic of K:, a histogram of the intervals between successive notes, a
  histogram of note lengths, the pitch range, and a histogram of where notes start in the bar. For each feature the
  intra-set distances of the real tunes (each to each other) and the inter-set distances (each generated tune to
  each real one) are smoothed with a Gaussian kernel; the overlapped area of the two densities (OA, 1.0 when they
  coincide) and their KL divergence say how far the generated tunes sit from the real ones.
- **Form** (MuPT, TunesFormer): the share of tunes with a repeat sign, sections per tune and bars per section, how
  alike a tune's sections are, the share of distinct bars in a tune, tunes with 3 or more identical bars in a row
  (one figure looped for lines), and length in bars.
- **Tonality**: the share of tunes ending on the tonic (the final) of K:, and of notes outside the key's scale.

A tune with no K: tonic (`K:none`) or no notes counts in the form measures only where it can.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import regex

from .reader import Reader, section_openings
from .text import read_text, split_tunes
from .transpose import ACCIDENTAL_OF, ACCIDENTALS, FLATS_ORDER, LETTERS, MODE_FIFTHS, NATURAL, SHARPS_ORDER, fifths_of

KEY = regex.compile(r"^\s*([A-G])([#b]?)\s*([A-Za-z]*)(.*)$", regex.DOTALL)
EXPLICIT = regex.compile(r"(\^\^|\^|__|_|=)([A-Ga-g])")
PITCH = regex.compile(r"^(\^\^|\^|__|_|=)?([A-Ga-g])([,']*)$")
# Note lengths, as fractions of a whole note, that the histogram counts apart; the last bin holds the rest.
LENGTH_BINS = tuple(Fraction(n, d) for n, d in ((1, 32), (1, 16), (3, 32), (1, 8), (3, 16), (1, 4), (3, 8), (1, 2), (3, 4), (1, 1)))
INTERVAL_SPAN = 12  # intervals beyond an octave count in the outermost bins
ONSET_BINS = 16  # positions of a note's start in its bar
REPEATED_BARS = 3  # bars in a row that count as a looped figure
TYPICAL_TUNES = 500  # real tunes Typicality sets a candidate against
MIN_TUNE_BARS = 8  # two four-bar phrases: a tune of fewer bars is a fragment (real tunes seldom are)
KDE_POINTS = 1000
FEATURES = ("pitch_class", "interval", "note_length", "pitch_range", "onset")
HISTOGRAMS = ("pitch_class", "interval", "note_length", "onset")  # the features that are histograms, for plots


@dataclass
class TuneMusic:
    """What the measures need of one tune: its sounding notes and bars as the reader read them."""

    pitches: list[int]  # MIDI numbers of the notes (a chord's highest), rests left out
    sounding: list[tuple[int, Fraction]]  # each of those notes with its length, in whole notes
    lengths: list[Fraction]  # of every note and rest, in whole notes
    onsets: list[float]  # of every note and rest, as a share of its bar (0 <= onset < 1) where the bar has a meter
    bars: list[tuple]  # each bar's notes as (pitch or None, onset, length): equal bars are the same music
    sections: list[list[int]]  # bar indices of each section
    repeat_sign: bool
    tonic: int | None  # pitch class of K:'s tonic
    scale: frozenset[int] | None  # pitch classes of K:'s signature


def key_signature(value: str | None) -> tuple[int | None, dict[str, int]]:
    """(tonic pitch class, the signature's accidental of each letter) of a K: value; (None, {}) for none."""
    match = KEY.match(value or "")
    if not match:
        return None, {}
    letter, accidental, mode, rest = match.groups()
    accidental = ACCIDENTAL_OF[accidental]
    mode = mode.lower()
    mode_key = mode if mode in ("m", "") else mode[:3]
    fifths = fifths_of(LETTERS.index(letter), accidental, MODE_FIFTHS.get(mode_key, 0))
    signature = {}
    if "exp" not in mode and "exp" not in rest.lower():
        for i in range(min(abs(fifths), 7)):
            signature[(SHARPS_ORDER if fifths > 0 else FLATS_ORDER)[i]] = 1 if fifths > 0 else -1
        if abs(fifths) > 7:  # double sharps or flats: keys no tune book writes
            for i in range(abs(fifths) - 7):
                signature[(SHARPS_ORDER if fifths > 0 else FLATS_ORDER)[i]] += 1 if fifths > 0 else -1
    for written, named in EXPLICIT.findall(rest):
        signature[named.upper()] = ACCIDENTALS[written]
    tonic = (NATURAL[LETTERS.index(letter)] + accidental) % 12
    return tonic, signature


def midi(pitch: str, signature: dict[str, int], bar_accidentals: dict[tuple[str, int], int]) -> int | None:
    """A written pitch as a MIDI number (`C` is middle C, 60), under the key's signature and the accidentals written
    earlier in the bar (ABC 2.1: they last to the end of the bar, for that letter and octave)."""
    match = PITCH.match(pitch)
    if not match:
        return None
    written, letter, marks = match.groups()
    octave = (1 if letter.islower() else 0) + marks.count("'") - marks.count(",")
    letter = letter.upper()
    if written:
        bar_accidentals[(letter, octave)] = ACCIDENTALS[written]
    offset = bar_accidentals.get((letter, octave), signature.get(letter, 0))
    return 60 + 12 * octave + NATURAL[LETTERS.index(letter)] + offset


def tune_music(text: str) -> TuneMusic:
    """Read a tune for the measures (never raises: unreadable text simply yields fewer notes)."""
    reader = Reader(notes=[]).feed(text).finish()
    tonic, signature = key_signature(reader.key)
    sounding, lengths, onsets = [], [], []
    bars: list[list] = [[] for _ in reader.bars]
    accidentals: dict[tuple[str, int], int] = {}
    current_bar, current_key = -1, reader.key
    for note in reader.notes:
        if note.bar != current_bar:
            accidentals, current_bar = {}, note.bar
        if note.key != current_key:
            _, signature = key_signature(note.key)
            current_key = note.key
        heard = [m for m in (midi(p, signature, accidentals) for p in note.pitches) if m is not None]
        top = max(heard) if heard else None
        if top is not None:
            sounding.append((top, note.length * note.unit))
        lengths.append(note.length * note.unit)
        bar = reader.bars[note.bar] if note.bar < len(reader.bars) else None
        if bar is not None and bar.wanted:
            onsets.append(float(min(note.onset / bar.wanted, Fraction(ONSET_BINS - 1, ONSET_BINS))))
        if note.bar < len(bars):
            bars[note.bar].append((top, note.onset, note.length))
    openings = section_openings(reader.bars)
    sections: dict[int, list[int]] = {}
    for index, opening in enumerate(openings):
        sections.setdefault(opening, []).append(index)
    repeat_sign = any(":" in bar.before or ":" in bar.after for bar in reader.bars)
    scale = frozenset((NATURAL[i] + signature.get(letter, 0)) % 12 for i, letter in enumerate(LETTERS)) if tonic is not None else None
    return TuneMusic([pitch for pitch, _ in sounding], sounding, lengths, onsets, [tuple(bar) for bar in bars], list(sections.values()), repeat_sign,
                     tonic, scale)


# ---------------------------------------------------------------------- per-tune features
def _histogram(values: Iterable[int], bins: int) -> np.ndarray:
    counts = np.bincount(np.asarray(list(values), dtype=int), minlength=bins)[:bins].astype(float)
    return counts / counts.sum() if counts.sum() else counts


def features(music: TuneMusic) -> dict[str, np.ndarray] | None:
    """The distribution features of one tune; None for a tune with fewer than two notes."""
    if len(music.pitches) < 2:
        return None
    tonic = music.tonic or 0
    intervals = np.clip(np.diff(music.pitches), -INTERVAL_SPAN, INTERVAL_SPAN) + INTERVAL_SPAN
    length_bins = [next((i for i, b in enumerate(LENGTH_BINS) if length == b), len(LENGTH_BINS)) for length in music.lengths]
    return {
        "pitch_class": _histogram(((p - tonic) % 12 for p in music.pitches), 12),
        "interval": _histogram(intervals, 2 * INTERVAL_SPAN + 1),
        "note_length": _histogram(length_bins, len(LENGTH_BINS) + 1),
        "pitch_range": np.array([max(music.pitches) - min(music.pitches)], dtype=float),
        "onset": _histogram((int(o * ONSET_BINS) for o in music.onsets), ONSET_BINS),
    }


# ---------------------------------------------------------------------- form and tonality, per tune
def longest_run(bars: list[tuple]) -> int:
    """The most identical bars in a row (a bar of notes; empty bars do not count)."""
    best = run = 0
    for i, bar in enumerate(bars):
        run = run + 1 if i and bar and bar == bars[i - 1] else 1
        best = max(best, run)
    return best


def form(music: TuneMusic) -> dict:
    bars = [bar for bar in music.bars if bar]
    sections = [[music.bars[i] for i in section] for section in music.sections]
    likeness = [
        sum(bar in set(earlier) for bar in later) / len(later)
        for earlier, later in zip(sections, sections[1:]) if later
    ]
    return {
        "repeat_sign": float(music.repeat_sign),
        "sections": float(len(sections)),
        "bars_per_section": len(music.bars) / len(sections) if sections else math.nan,
        "section_likeness": float(np.mean(likeness)) if likeness else math.nan,
        "distinct_bars": len(set(bars)) / len(bars) if bars else math.nan,
        "bar_runs": float(longest_run(music.bars) >= REPEATED_BARS),
        "bars": float(len(music.bars)),
    }


def tonality(music: TuneMusic) -> dict:
    if music.tonic is None or not music.pitches:
        return {"tonic_ending": math.nan, "out_of_key": math.nan}
    outside = sum(p % 12 not in music.scale for p in music.pitches)
    return {"tonic_ending": float(music.pitches[-1] % 12 == music.tonic), "out_of_key": outside / len(music.pitches)}


def fragment(music: TuneMusic) -> bool:
    """Fewer bars than a tune holds (MIN_TUNE_BARS)."""
    return len(music.bars) < MIN_TUNE_BARS


def tune_flags(text: str) -> list[str]:
    """What a listener would hear wrong with one tune, for the report (see music_flags)."""
    return music_flags(tune_music(text))


def music_flags(music: TuneMusic) -> list[str]:
    """What a listener would hear wrong with a tune already read: a fragment instead of a tune, a looped figure, no
    return to the tonic, notes outside the key."""
    flags = [f"only {len(music.bars)} bars"] if fragment(music) else []
    run = longest_run(music.bars)
    if run >= REPEATED_BARS:
        flags.append(f"one bar played {run} times in a row")
    tone = tonality(music)
    if tone["tonic_ending"] == 0.0:
        flags.append("does not end on the tonic of K:")
    if tone["out_of_key"] > 0.1:
        flags.append(f"{tone['out_of_key']:.0%} of its notes outside the key")
    return flags


# ---------------------------------------------------------------------- distributions
def _distances(a: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """Euclidean distances between the rows of `a` (each pair once), or between each row of `a` and each of `b`."""
    if b is None:
        i, j = np.triu_indices(len(a), k=1)
        return np.linalg.norm(a[i] - a[j], axis=1)
    return np.linalg.norm(a[:, None, :] - b[None, :, :], axis=2).ravel()


def _kde(samples: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """A Gaussian kernel density (Scott's bandwidth, as scipy's gaussian_kde) of `samples` on `grid`."""
    spread = samples.std(ddof=1) if len(samples) > 1 else 0.0
    bandwidth = max(spread * len(samples) ** (-1 / 5), 1e-3 * (grid[-1] - grid[0]), 1e-9)
    z = (grid[:, None] - samples[None, :]) / bandwidth
    return np.exp(-0.5 * z**2).sum(axis=1) / (len(samples) * bandwidth * math.sqrt(2 * math.pi))


def overlap(intra: np.ndarray, inter: np.ndarray) -> tuple[float, float]:
    """(overlapped area, KL divergence of intra from inter) of two sets of distances, as mgeval computes them."""
    if len(intra) < 2 or len(inter) < 2:
        return math.nan, math.nan
    low, high = min(intra.min(), inter.min()), max(intra.max(), inter.max())
    margin = 0.1 * (high - low) or 1.0
    grid = np.linspace(low - margin, high + margin, KDE_POINTS)
    p, q = _kde(intra, grid), _kde(inter, grid)
    step = grid[1] - grid[0]
    area = float(np.minimum(p, q).sum() * step)
    p_mass, q_mass = p * step + 1e-12, q * step + 1e-12
    kl = float(np.sum(p_mass * np.log(p_mass / q_mass)))
    return min(area, 1.0), kl


def _mean(values: Iterable[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return float(np.mean(kept)) if kept else math.nan


def set_measures(tunes: list[str]) -> tuple[dict, dict[str, np.ndarray]]:
    """(the form and tonality measures of a set of tunes, averaged over its tunes; each feature as a matrix)."""
    musics = [tune_music(t) for t in tunes]
    per_tune = [{**form(m), **tonality(m)} for m in musics]
    summary = {name: _mean(row[name] for row in per_tune) for name in per_tune[0]} if per_tune else {}
    summary["tunes"] = len(tunes)
    found = [f for f in map(features, musics) if f is not None]
    matrices = {name: np.stack([f[name] for f in found]) for name in FEATURES} if found else {}
    return summary, matrices


class Typicality:
    """How far one tune lies from real tunes in the distribution features, for best-of-n to prefer the typical
    candidate: per feature, the tune's mean distance to each real tune (mgeval's inter-set distance) over the real
    tunes' mean distance to each other; then the mean over FEATURES. A real tune scores about 1; lower is closer.
    Built from at most `limit` of `tunes` (drawn with `seed`): the distances grow with the reference's size.

    With `with_form`, the same distance on the tune's share of distinct bars (how much it repeats itself) is added,
    weighed as much as the FEATURES together: preference tuning (finetune/preference.py) ranks so, to teach a model
    form; best of n does not, since a filter on form pays with the distribution."""

    def __init__(self, tunes: list[str], limit: int = TYPICAL_TUNES, seed: int = 0, with_form: bool = False):
        chosen = random.Random(seed).sample(tunes, min(limit, len(tunes)))
        _, self.matrices = set_measures(chosen)
        self.scale = {name: _scale(m) for name, m in self.matrices.items()}
        self.shares = None
        if with_form:
            shares = np.array([form(tune_music(t))["distinct_bars"] for t in chosen], dtype=float)
            self.shares = shares[~np.isnan(shares)][:, None]
            self.shares_scale = _scale(self.shares)

    def distance(self, music: TuneMusic) -> float:
        found = features(music)
        if found is None or not self.matrices:
            return math.inf
        near = float(np.mean([_distances(found[name][None], self.matrices[name]).mean() / self.scale[name]
                              for name in FEATURES]))
        if self.shares is None:
            return near
        share = form(music)["distinct_bars"]
        if math.isnan(share) or not len(self.shares):
            return math.inf
        return near + float(_distances(np.array([[share]]), self.shares).mean()) / self.shares_scale


def _scale(matrix: np.ndarray) -> float:
    """The mean distance between the rows of `matrix` (1.0 for fewer than two rows, never 0)."""
    return max(float(_distances(matrix).mean()), 1e-9) if len(matrix) > 1 else 1.0


def compare(real: list[str], generated: list[str]) -> dict:
    """The measures of `generated` against `real` (see the module docstring): one JSON-ready object."""
    return compare_measured(set_measures(real), generated)


def compare_measured(real: tuple[dict, dict[str, np.ndarray]], generated: list[str]) -> dict:
    """`compare` against real tunes measured once by `set_measures`, for a caller that sets many sets against them."""
    real_summary, real_features = real
    generated_summary, generated_features = set_measures(generated)
    distribution = {}
    for name in FEATURES:
        if name in real_features and name in generated_features:
            area, kl = overlap(_distances(real_features[name]), _distances(generated_features[name], real_features[name]))
        else:
            area, kl = math.nan, math.nan
        distribution[name] = {"overlapped_area": area, "kl_divergence": kl}
    return {
        "overlapped_area": _mean(d["overlapped_area"] for d in distribution.values()),
        "distribution": distribution,
        "generated": generated_summary,
        "real": real_summary,
        # each set's mean histogram of each histogram feature, to be drawn one over the other
        "histograms": {
            side: {name: matrices[name].mean(axis=0).tolist() for name in HISTOGRAMS if name in matrices}
            for side, matrices in (("generated", generated_features), ("real", real_features))
        },
    }


# ---------------------------------------------------------------------- the command
def read_tunes(path: Path) -> list[str]:
    """Tunes from a tune book (.abc, .txt) or a JSON Lines file whose records hold `text`."""
    if path.suffix == ".jsonl":
        tunes = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{number}: not JSON ({e.msg}); each line is an object with a 'text'") from None
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise ValueError(f"{path}:{number}: no 'text' string; each line is an object with a 'text'")
            tunes.append(record["text"])
        return tunes
    return split_tunes(read_text(path))


def _json_ready(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m finetune.abc.measures", description=__doc__.split("\n\n")[0])
    parser.add_argument("real", type=Path, help="the real tunes: a .abc tune book or a .jsonl with 'text'")
    parser.add_argument("generated", type=Path, help="the tunes to measure against them, in either form")
    args = parser.parse_args(argv)
    sets = []
    for path in (args.real, args.generated):
        try:
            tunes = read_tunes(path)
        except (OSError, UnicodeDecodeError, ValueError) as e:
            print(f"error: {e if isinstance(e, ValueError) else f'{path}: cannot read it ({e})'}", file=sys.stderr)
            return 2
        if not tunes:
            print(f"error: {path}: no tunes in it; give a tune book (.abc) or a .jsonl with 'text'", file=sys.stderr)
            return 2
        sets.append(tunes)
    print(json.dumps(_json_ready(compare(*sets)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
