"""Attention over packed rows: every tune attends to itself only, and no L x L mask is ever built.

A packed row holds several tunes, each with `position_ids` restarting at 0 (finetune/packing.py). How
each implementation keeps them apart:

- `sdpa` (the default) trains and evaluates through `sdpa_packed`, registered here with transformers'
  `AttentionInterface` and no mask function, so transformers builds no mask. It reads the tune
  boundaries from `position_ids` once per forward pass, gathers tunes of similar length into padded
  batches and runs SDPA's causal kernel on each (`is_causal=True`, the fast path that skips the upper
  triangle), forward and backward. Attention then costs sum(l_i^2)/2 for tunes of length l_i instead of
  L^2/2 for the row. It has no KV cache path: generation uses stock `sdpa`.
- `flash_attention_2`: transformers finds packed tunes from `position_ids` only when a batch holds one
  row (`_is_packed_sequence`), so `PackedCollator(varlen_kwargs=True)` passes the boundaries as
  flash-attention's varlen kwargs (`cu_seq_lens_q/k`, `max_length_q/k`) over the batch flattened, which
  transformers' flash path uses at any batch size (it flattens the batch the same way).
- `flex_attention` and `eager`: transformers builds a document mask from each row's `position_ids`
  restarts (a sparse BlockMask for flex).

The implementation is a runtime choice, never saved: a checkpoint's config names no attention, so plain
`AutoModelForCausalLM.from_pretrained` loads it with stock attention.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import AttentionInterface, default_data_collator
from transformers.integrations.sdpa_attention import sdpa_attention_forward

PACKED_SDPA = "sdpa_packed"
# Tunes whose lengths lie within this factor of each other share one padded batch: padding costs a group
# at most 1 - 1/GROUP_RATIO^2 of its attention work, and each group is one kernel call (~7 a batch here).
# Measured on the quick and music_abc rows: 1.5 as fast as 1.2 and 1.35 (within noise), faster than 2.
GROUP_RATIO = 1.5

# The SDPA kernels the groups run on: every one but cuDNN's. Since torch 2.9, SDPA tries cuDNN's attention first
# for 16-bit inputs on Hopper (and sm100) GPUs, and cuDNN builds an execution plan for each new shape, while the
# groups here take a new (tunes, longest) shape nearly every call. Measured on an H200 (torch 2.11, cu130) with
# SDPA's own choice: bf16 trained 13x slower than fp32 (0.55 against 7.0 steps/s), and bf16 through `eager` as
# fast as fp32 (6.8), so the time went in this path: 10 to 20 ms per group (forward and backward) at any batch
# size. That cuDNN's plans are that time is this change's premise, not yet measured on a GPU with it.
SHAPE_PER_CALL_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def tune_bounds(position_ids: torch.Tensor) -> torch.Tensor:
    """Where each tune starts in the batch flattened (a position 0, or the start of a row), then the end: on the CPU."""
    starts = position_ids == 0
    starts[:, 0] = True
    return torch.cat([starts.reshape(-1).nonzero().view(-1).cpu(), torch.tensor([position_ids.numel()])])


def packed_kwargs(position_ids: torch.Tensor) -> dict:
    """Flash-attention varlen kwargs for a batch of packed rows, over the batch flattened."""
    cu_seq_lens = tune_bounds(position_ids).to(torch.int32)
    max_length = int(cu_seq_lens.diff().max())
    return {"cu_seq_lens_q": cu_seq_lens, "cu_seq_lens_k": cu_seq_lens, "max_length_q": max_length, "max_length_k": max_length}


class PackedCollator:
    """`default_data_collator`, plus with `varlen_kwargs` each tune's boundaries as flash-attention's
    varlen kwargs (for `flash_attention_2`; the other implementations read `position_ids`).

    Not for a streamed dataset: accelerate's dispatcher slices every tensor of a batch by rows, and
    `cu_seq_lens` is not by rows (the recipe check refuses streaming with flash_attention_2).
    """

    def __init__(self, varlen_kwargs: bool = False):
        self.varlen_kwargs = varlen_kwargs

    def __call__(self, features: list[dict]) -> dict:
        batch = default_data_collator(features)
        if self.varlen_kwargs:
            batch.update(packed_kwargs(batch["position_ids"]))
        return batch


def _layout(cu_seq_lens: torch.Tensor, device: torch.device) -> tuple:
    """Where each tune goes: tunes of similar length are grouped and padded to the group's longest, and the
    groups laid end to end. Returns each group's (tunes, longest) and, for every token of the batch flattened,
    the entry of that layout that holds it. The entries no token holds are padding, zeros after a tune's last
    token, which causal attention never lets a real token see.

    Each token has one entry, so one `index_copy` lays a tensor out and one `index_select` brings the output
    back, and their backward passes are a gather and an `index_add_` over distinct entries: no two gradients
    are ever summed into one place (padding that repeated a tune's last token did that, with atomic adds under
    contention on a GPU), and none is lost. Indexing per group or slicing the layout would instead fill a zero
    tensor of the whole batch per group in the backward pass.
    """
    cu = cu_seq_lens.long()
    starts, lengths = cu[:-1], cu.diff()
    bucket = torch.floor(torch.log(lengths.double()) / np.log(GROUP_RATIO)).long()
    shapes, holder = [], torch.empty(int(cu[-1]), dtype=torch.long)
    placed = 0
    for b in torch.unique(bucket):
        members = (bucket == b).nonzero().view(-1)
        longest = int(lengths[members].max())
        offsets = torch.arange(longest)
        real = offsets[None, :] < lengths[members, None]
        holder[(starts[members, None] + offsets[None, :])[real]] = placed + real.view(-1).nonzero().view(-1)
        shapes.append((len(members), longest))
        placed += len(members) * longest
    return shapes, holder.to(device)


_last_layout: list = [None, None]  # (position_ids, layout) of the pass in flight: every layer shares them


def sdpa_packed_attention(module, query, key, value, attention_mask, position_ids=None, **kwargs):
    """SDPA's causal kernel run tune by tune, tunes grouped by length (see the module docstring)."""
    batch, heads, length, dim = query.shape
    if key.shape[2] != length:
        raise ValueError(f"{PACKED_SDPA} attends within packed tunes in training and evaluation; generate with 'sdpa'")
    if position_ids is None:  # no packing: each row is one sequence
        position_ids = torch.arange(length, device=query.device)[None]
    if _last_layout[0] is not position_ids:
        # Models make position_ids of shape (1, length) when none are given: the same for every row.
        _last_layout[:] = [position_ids, _layout(tune_bounds(position_ids.expand(batch, length)), query.device)]
    shapes, holder = _last_layout[1]
    kwargs.pop("is_causal", None)
    sizes = [tunes * longest for tunes, longest in shapes]
    laid = [  # (batch, heads, length, dim) -> (layout entries, heads, dim), cut into groups
        x.new_zeros(sum(sizes), x.shape[1], dim)
        .index_copy(0, holder, x.transpose(1, 2).reshape(batch * length, x.shape[1], dim))
        .split(sizes)
        for x in (query, key, value)
    ]
    outs = []
    with sdpa_kernel(SHAPE_PER_CALL_BACKENDS):  # the backward pass runs the kernel the forward chose
        for (tunes, longest), *group in zip(shapes, *laid):
            q, k, v = (x.view(tunes, longest, *x.shape[1:]).transpose(1, 2) for x in group)
            tune_out, _ = sdpa_attention_forward(module, q, k, v, None, is_causal=True, **kwargs)
            outs.append(tune_out.reshape(tunes * longest, heads, dim))
    return torch.cat(outs).index_select(0, holder).view(batch, length, heads, dim), None


AttentionInterface.register(PACKED_SDPA, sdpa_packed_attention)


def training_attention(attn_implementation: str) -> str:
    """The implementation a model trains and evaluates packed rows with: `sdpa` becomes `sdpa_packed`."""
    return PACKED_SDPA if attn_implementation == "sdpa" else attn_implementation
