"""How alike two tunes are: cosine similarity of their character n-gram counts, over the music only.

Used for copying (each generated tune against every training tune: NotaGen drops samples above 0.95)
and for diversity (generated tunes against each other). Headers are left out, since thousands of tunes
share `M:6/8\\nL:1/8\\nK:D`, and so is white space. 1.0 means the same n-grams in the same proportions,
0.0 none in common.
"""

from __future__ import annotations

import re
import warnings
from collections import Counter

import numpy as np
import torch

from ..abc import header_length

NGRAM = 4
WHITE_SPACE = re.compile(r"\s+")


def music_of(tune: str) -> str:
    """The tune's body (everything after its K: line) without white space, which in ABC is only layout:
    otherwise a sample that trails off into spaces matches every tune padded with spaces."""
    return WHITE_SPACE.sub("", tune[header_length(tune):])


def ngram_counts(text: str, n: int = NGRAM) -> Counter:
    return Counter(text[i : i + n] for i in range(len(text) - n + 1))


class NgramIndex:
    """Tunes' n-gram count vectors as one sparse matrix, built once and queried many times."""

    def __init__(self, tunes: list[str], n: int = NGRAM):
        self.n, self.vocab = n, {}
        rows, columns, values, norms = [0], [], [], []
        for tune in tunes:
            counts = ngram_counts(music_of(tune), n)
            entries = sorted((self.vocab.setdefault(gram, len(self.vocab)), count) for gram, count in counts.items())
            columns.extend(column for column, _ in entries)
            values.extend(count for _, count in entries)
            rows.append(len(columns))
            norms.append(np.sqrt(sum(v * v for v in counts.values())))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            self.matrix = torch.sparse_csr_tensor(
                torch.tensor(rows, dtype=torch.int64),
                torch.tensor(columns, dtype=torch.int64),
                torch.tensor(values, dtype=torch.float32),
                size=(len(tunes), max(len(self.vocab), 1)),
                check_invariants=True,
            )
        self.norms = torch.tensor(norms, dtype=torch.float32)

    def __len__(self) -> int:
        return len(self.norms)

    def similarities(self, tunes: list[str]) -> np.ndarray:
        """[len(tunes), len(index)] cosine similarities; n-grams the index never saw count in the norms only."""
        queries = torch.zeros(self.matrix.shape[1], len(tunes))
        norms = torch.zeros(len(tunes))
        for column, tune in enumerate(tunes):
            counts = ngram_counts(music_of(tune), self.n)
            norms[column] = float(np.sqrt(sum(v * v for v in counts.values())))
            for gram, count in counts.items():
                row = self.vocab.get(gram)
                if row is not None:
                    queries[row, column] = count
        dots = (self.matrix @ queries).T
        return (dots / (norms[:, None] * self.norms[None, :]).clamp(min=1e-12)).numpy()


def nearest_similarity(tunes: list[str], index: NgramIndex) -> np.ndarray:
    """For each tune, its similarity to the most alike tune in the index."""
    if not tunes or not len(index):
        return np.zeros(len(tunes))
    return index.similarities(tunes).max(axis=1)


def diversity(tunes: list[str]) -> float:
    """1 - mean similarity over all pairs of different tunes (1.0: nothing shared; 0.0: all the same)."""
    if len(tunes) < 2:
        return float("nan")
    pairs = NgramIndex(tunes).similarities(tunes)
    off_diagonal = pairs[~np.eye(len(tunes), dtype=bool)]
    return float(1 - off_diagonal.mean())
