"""Attention over packed rows: every tune attends to itself only, and no L x L mask is ever built.

The collator (`PackedCollator`) reads the tune boundaries from each batch's `position_ids` once, on the
CPU, and passes them to the model as flash-attention's varlen keyword arguments (`cu_seq_lens_q/k`,
`max_length_q/k`) over the batch flattened into one sequence. The model hands them to its attention
function, and each implementation uses them its own way:

- `sdpa` (the default) trains and evaluates through `sdpa_packed`, registered here with transformers'
  `AttentionInterface`: tunes are gathered into padded batches of similar length and each batch runs
  SDPA's causal kernel (`is_causal=True`, the fast path that skips the upper triangle), forward and
  backward. Attention costs sum(l_i^2)/2 for tunes of length l_i instead of L^2/2 for the row. Without
  the boundaries (generation, a row from elsewhere) it is transformers' own `sdpa` function.
- `flash_attention_2`: transformers' flash path uses the varlen kwargs at any batch size (it flattens
  the batch), where from `position_ids` alone it finds packed tunes only when the batch holds one row.
- `flex_attention` and `eager`: transformers builds a document mask from the `position_ids` restarts of
  each row (a sparse BlockMask for flex), and the kwargs are ignored.

The implementation is a runtime choice, never saved: a checkpoint's config names no attention, so plain
`AutoModelForCausalLM.from_pretrained` loads it with stock attention.
"""

from __future__ import annotations

import numpy as np
import torch
from transformers import AttentionInterface, default_data_collator
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

PACKED_SDPA = "sdpa_packed"
# Tunes whose lengths lie within this factor of each other share one padded batch: padding costs a group
# at most 1 - 1/GROUP_RATIO^2 of its attention work, and each group is one kernel call (~7 a batch here).
# Measured on the quick and music_abc rows: 1.5 as fast as 1.2 and 1.35 (within noise), faster than 2.
GROUP_RATIO = 1.5


def packed_kwargs(position_ids: np.ndarray) -> dict:
    """Flash-attention varlen kwargs for a batch of packed rows, flattened: a tune starts where its position is 0."""
    flat = np.asarray(position_ids).reshape(-1)
    starts = np.flatnonzero(flat == 0)
    cu_seq_lens = torch.from_numpy(np.append(starts, flat.size).astype(np.int32))
    max_length = int(np.diff(cu_seq_lens.numpy()).max())
    return {"cu_seq_lens_q": cu_seq_lens, "cu_seq_lens_k": cu_seq_lens, "max_length_q": max_length, "max_length_k": max_length}


class PackedCollator:
    """`default_data_collator`, plus each tune's boundaries for the attention (see the module docstring)."""

    def __call__(self, features: list[dict]) -> dict:
        batch = default_data_collator(features)
        batch.update(packed_kwargs(batch["position_ids"].numpy()))
        return batch


def _layout(cu_seq_lens: torch.Tensor, device: torch.device) -> tuple:
    """Where each tune goes: tunes of similar length are grouped and padded to the group's longest, and the
    groups laid end to end. Returns the token (of the batch flattened) behind every entry of that layout
    (padding repeats a tune's last token, which causal attention never lets a real token see), each
    group's (tunes, longest), and for every token of the batch the entry that holds it.

    One `index_select` in and one out per tensor and layer: their backward is one `index_add_` each,
    where indexing per group or slicing the layout would fill a zero tensor of the whole batch per group.
    """
    cu = cu_seq_lens.cpu().long()
    starts, lengths = cu[:-1], cu.diff()
    bucket = torch.floor(torch.log(lengths.double()) / np.log(GROUP_RATIO)).long()
    sources, shapes, holder = [], [], torch.empty(int(cu[-1]), dtype=torch.long)
    placed = 0
    for b in torch.unique(bucket):
        members = (bucket == b).nonzero().view(-1)
        longest = int(lengths[members].max())
        offsets = torch.arange(longest)
        source = starts[members, None] + torch.minimum(offsets[None, :], lengths[members, None] - 1)
        real = offsets[None, :] < lengths[members, None]
        holder[source[real]] = placed + real.view(-1).nonzero().view(-1)
        sources.append(source.view(-1))
        shapes.append((len(members), longest))
        placed += source.numel()
    return torch.cat(sources).to(device), shapes, holder.to(device)


_last_layout: list = [None, None]  # (cu_seq_lens, layout) of the batch in flight: every layer shares them


def sdpa_packed_attention(module, query, key, value, attention_mask, cu_seq_lens_q=None, **kwargs):
    """SDPA's causal kernel run tune by tune (grouped by length); stock SDPA when the batch names no tunes."""
    if cu_seq_lens_q is None or query.shape[2] != key.shape[2]:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    batch, heads, length, dim = query.shape
    if _last_layout[0] is not cu_seq_lens_q:
        _last_layout[:] = [cu_seq_lens_q, _layout(cu_seq_lens_q, query.device)]
    source, shapes, holder = _last_layout[1]
    kwargs.pop("is_causal", None)
    sizes = [tunes * longest for tunes, longest in shapes]
    laid = [  # (batch, heads, length, dim) -> (layout entries, heads, dim), cut into groups
        x.transpose(1, 2).reshape(batch * length, x.shape[1], dim).index_select(0, source).split(sizes)
        for x in (query, key, value)
    ]
    outs = []
    for (tunes, longest), *group in zip(shapes, *laid):
        q, k, v = (x.view(tunes, longest, *x.shape[1:]).transpose(1, 2) for x in group)
        tune_out, _ = sdpa_attention_forward(module, q, k, v, None, is_causal=True, **kwargs)
        outs.append(tune_out.reshape(tunes * longest, heads, dim))
    return torch.cat(outs).index_select(0, holder).view(batch, length, heads, dim), None


AttentionInterface.register(PACKED_SDPA, sdpa_packed_attention)
# The mask stock SDPA needs where the batch names no tunes (generation with padding, say).
AttentionMaskInterface.register(PACKED_SDPA, sdpa_mask)


def training_attention(attn_implementation: str) -> str:
    """The implementation a model trains and evaluates packed rows with: `sdpa` becomes `sdpa_packed`."""
    return PACKED_SDPA if attn_implementation == "sdpa" else attn_implementation
