"""One stored tensor [B, H, n, ...] as a list of exactly-sized pages of consecutive tokens (dim 2).

Appending never copies what is already stored: a chunk of PAGE tokens or more (a prompt, a flushed run) becomes
a page of its own, and single decode tokens fill an open page of at most PAGE tokens, which is reallocated at
its exact new size (a copy of fewer than PAGE tokens, not of the cache). Every page is its own storage and holds
exactly its tokens, so the bytes counted are the bytes allocated: nothing is reserved, nothing hidden.
Attention reads the pages where they lie (measured/decode.py); `full()` concatenates them for the policy work
that needs one tensor (a transient copy).
"""

from __future__ import annotations

import torch

PAGE = 64  # tokens an open page grows to before the next token starts a new one


def own(x: torch.Tensor) -> torch.Tensor:
    """x in an exactly-sized storage of its own. A single token's K or V can be a contiguous view into a
    projection's output (GPT-2's fused QKV): keeping it would keep the whole buffer, query included."""
    if x.is_contiguous() and x.untyped_storage().nbytes() == x.numel() * x.element_size():
        return x
    return x.clone(memory_format=torch.contiguous_format)


def bits(x: torch.Tensor) -> torch.Tensor:
    """float8 has no gather/scatter kernels on every device; its bytes move the same as uint8."""
    return x.view(torch.uint8) if x.dtype == torch.float8_e4m3fn else x


def gather_tokens(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x [B, H, n, ...] at token indices idx [B, H, m], in a new tensor."""
    if x.dim() == 3:
        return torch.gather(x, 2, idx)
    out = torch.gather(bits(x), 2, idx.unsqueeze(-1).expand(*idx.shape, x.shape[-1]))
    return out.view(x.dtype)


class Paged:
    """A token sequence of one tensor in exactly-sized pages. A row may stand for several tokens (per-channel
    scales cover a run of `tokens_per_row` tokens): pages are cut by tokens, so a payload and its scales, appended
    in the same chunks, have pages over the same tokens."""

    def __init__(self, tokens_per_row: int = 1):
        self.pages: list[torch.Tensor] = []
        self.open = False  # whether the last page still takes more rows
        self.n = 0  # rows
        self.per = tokens_per_row

    def __len__(self) -> int:
        return self.n

    def append(self, x: torch.Tensor) -> None:
        m = x.shape[2]
        if m == 0:
            return
        if self.open and (self.pages[-1].shape[2] + m) * self.per <= PAGE:
            self.pages[-1] = torch.cat([self.pages[-1], x], 2)
            self.open = self.pages[-1].shape[2] * self.per < PAGE
        else:
            self.pages.append(own(x))
            self.open = m * self.per < PAGE
        self.n += m

    def full(self) -> torch.Tensor | None:
        """Every token in one tensor (the page itself when there is one)."""
        if not self.pages:
            return None
        return self.pages[0] if len(self.pages) == 1 else torch.cat(self.pages, 2)

    def since(self, start: int) -> torch.Tensor:
        """Tokens start.. in one tensor (a copy unless they lie in one page)."""
        parts, offset = [], 0
        for p in self.pages:
            n = p.shape[2]
            if offset + n > start:
                parts.append(p[:, :, max(0, start - offset):])
            offset += n
        return parts[0] if len(parts) == 1 else torch.cat(parts, 2)

    def replace(self, x: torch.Tensor | None) -> None:
        """Hold exactly x (a new tensor) as one page."""
        self.pages = [] if x is None or x.shape[2] == 0 else [own(x)]
        self.n = 0 if not self.pages else x.shape[2]
        self.open = 0 < self.n * self.per < PAGE

    def take(self, idx: torch.Tensor) -> None:
        """Keep the tokens at idx [B, H, m], in that order, in one new exactly-sized page."""
        if self.pages:
            self.replace(gather_tokens(self.full(), idx))

    def at(self, slot: torch.Tensor) -> torch.Tensor:
        """The token at slot [B, H] of every (batch, head), [B, H, 1, ...] (a copy)."""
        out, offset = None, 0
        for p in self.pages:
            n = p.shape[2]
            local = (slot - offset).clamp(0, n - 1)
            got = gather_tokens(p, local[..., None])
            inside = ((slot >= offset) & (slot < offset + n)).view(*slot.shape, *([1] * (p.dim() - 2)))
            out = got if out is None else torch.where(inside, got, out)
            offset += n
        return out

    def put(self, slot: torch.Tensor, new: torch.Tensor, keep: torch.Tensor | None = None) -> None:
        """Overwrite the token at slot [B, H] of every (batch, head) with new [B, H, 1, ...], in place, except
        where keep [B, H] is True."""
        whole = len(self.pages) == 1 and keep is None  # every slot lies in the one page: no masking
        offset = 0
        for p in self.pages:
            lo, n = offset, p.shape[2]
            offset += n
            local = (slot - lo).clamp(0, n - 1)
            index = local[:, :, None, None].expand(*p.shape[:2], 1, p.shape[-1]) if p.dim() == 4 else local[:, :, None]
            val = bits(new.to(p.dtype))
            if not whole:
                inside = (slot >= lo) & (slot < lo + n)
                if keep is not None:
                    inside &= ~keep
                if not bool(inside.any()):
                    continue
                old = torch.gather(bits(p), 2, index)
                val = torch.where(inside.view(*slot.shape, *([1] * (p.dim() - 2))), val, old)
            bits(p).scatter_(2, index, val)

    def set_last(self, x: torch.Tensor) -> None:
        """Overwrite the last token in place with x [B, H, 1, ...]."""
        self.pages[-1][:, :, -1:].copy_(x)

    def clear(self) -> None:
        self.pages, self.open, self.n = [], False, 0
