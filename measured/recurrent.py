"""Cache layers for recurrent token mixers (Mamba-1/2, Jamba's Mamba layers, Gated DeltaNet): a conv window and
a state matrix per sequence, whose size does not depend on the sequence length.

transformers 5.x drives them through its linear-attention cache API (`get_conv_state` / `update_conv_state`,
`get_recurrent_state` / `update_recurrent_state`, `LinearAttentionLayer`), so these layers are that class with
two kvsim additions: `tensors()` for the byte count, and quantized storage when the composition's quantization
applies to recurrent state (Quant's state=true). Eviction, merging, low rank and offload have no tokens to act on
here and leave the state alone, as kvsim predicts.

Quantized storage keeps only the packed payload and its scales between steps. A read hands the model a
dequantized working copy; a write quantizes it back. The decode step's conv kernel updates its conv window in
place without calling the cache again, so the working copy of the window is quantized back when the layer
writes its recurrent state, which every one of these mixers does after its conv (and `tensors()` flushes it
too, so bytes are never counted with the working copy alive).
"""

from __future__ import annotations

import torch
from transformers.cache_utils import LinearAttentionLayer

from .quant import dequantize_groups, quantize_groups
from .stores import physical_bytes


class _Packed:
    """One state tensor stored quantized, rows along its last dim (transposed first for a conv window, whose
    rows run along the channels: kvsim.model.StatePart)."""

    def __init__(self, x: torch.Tensor, quant, transpose: bool):
        self.shape, self.dtype, self.transpose = x.shape, x.dtype, transpose
        rows = x.transpose(-1, -2) if transpose else x
        self.width = rows.shape[-1]
        self.quant = quant
        self.parts = quantize_groups(rows.contiguous(), quant.bits, quant.group, quant.kind, quant.scale_bits)

    def value(self) -> torch.Tensor:
        q = self.quant
        payload, scale, zero = self.parts
        x = dequantize_groups(payload, scale, zero, q.bits, q.group, q.kind, self.width, self.dtype)
        return (x.transpose(-1, -2) if self.transpose else x).contiguous()

    def tensors(self) -> list[torch.Tensor]:
        return [t for t in self.parts if t is not None]


class StateLayer(LinearAttentionLayer):
    """One recurrent layer's cache (transformers' LinearAttentionLayer), counted and optionally quantized."""

    is_compileable = False

    def __init__(self, quant=None):
        super().__init__(number_of_states=1)
        self.quant = quant  # a Quant with state=true, or None: full precision, exactly as transformers keeps it
        self.packed_conv: _Packed | None = None
        self.packed_state: _Packed | None = None
        self.working_conv: torch.Tensor | None = None  # the dequantized conv window a decode step is updating

    # -- reads, through KvsimCache.get_conv_state / get_recurrent_state
    def conv_state(self, state_idx: int = 0) -> torch.Tensor | None:
        if not self.has_previous_state[state_idx]:
            return None
        if self.quant is None:
            return self.conv_states[state_idx]
        self._flush()
        self.working_conv = self.packed_conv.value()  # the conv kernel may update it in place
        return self.working_conv

    def recurrent_state(self, state_idx: int = 0) -> torch.Tensor | None:
        if not self.has_previous_state[state_idx]:
            return None
        if self.quant is None:
            return self.recurrent_states[state_idx]
        return None if self.packed_state is None else self.packed_state.value()

    # -- writes
    def update_conv_state(self, conv_states, state_idx: int = 0, conv_kernel_size: int | None = None, **kwargs):
        if self.quant is None:
            return super().update_conv_state(conv_states, state_idx, conv_kernel_size=conv_kernel_size, **kwargs)
        k = conv_kernel_size or conv_states.shape[-1]
        self.conv_kernel_size[state_idx] = k
        if state_idx == 0:
            self.cumulative_length_linear = self.cumulative_length_linear + conv_states.shape[-1]
        previous = self.conv_state(state_idx)
        full = conv_states if previous is None else torch.cat([previous, conv_states], -1)
        if full.shape[-1] < k:
            full = torch.nn.functional.pad(full, (k - full.shape[-1], 0))
        self.working_conv = None
        self.packed_conv = _Packed(full[..., -k:], self.quant, transpose=True)
        self.has_previous_state[state_idx] = True
        self.is_conv_states_initialized[state_idx] = True
        return full

    def update_recurrent_state(self, recurrent_states, state_idx: int = 0, **kwargs):
        if self.quant is None:
            return super().update_recurrent_state(recurrent_states, state_idx, **kwargs)
        last = recurrent_states if isinstance(recurrent_states, torch.Tensor) else recurrent_states[-1]
        self.packed_state = _Packed(last, self.quant, transpose=False)
        self.is_recurrent_states_initialized[state_idx] = True
        self._flush()
        return last

    def increase_count(self, state_idx: int):
        if state_idx == 0:  # out of place: the counter is not a static buffer here
            self.cumulative_length_linear = self.cumulative_length_linear + 1

    def _flush(self) -> None:
        """Quantize back a conv window the decode step updated in place."""
        if self.working_conv is not None:
            self.packed_conv = _Packed(self.working_conv, self.quant, transpose=True)
            self.working_conv = None

    def reset(self) -> None:
        super().reset()
        self.packed_conv = self.packed_state = self.working_conv = None

    # -- bytes
    def tensors(self) -> list[torch.Tensor]:
        if self.quant is None:
            return [t for t in (self.conv_states[0], self.recurrent_states[0]) if t is not None]
        self._flush()
        return [t for p in (self.packed_conv, self.packed_state) if p is not None for t in p.tensors()]

    def nbytes(self) -> int:
        return physical_bytes(self.tensors())
