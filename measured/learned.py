"""Train the learned scorer (kvsim's `learned` policy) on real text.

Targets come from the harness itself: an H2O cache with a budget above the prompt evicts nothing and keeps,
per layer and head, every token's post-RoPE key and the attention it received from every later query. The
scorer (key -> hidden -> score, one per layer) learns log(mean attention received), so at run time it ranks
tokens by how much attention they are likely to draw, from the key alone. The text comes from articles the
evaluation never uses (text.corpus(skip=...)).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from kvsim.atomic import replacing
from kvsim.policies.h2o import H2O
from kvsim.policies.compose import Compose

from .loop import Session
from .models import cache_dir
from .text import corpus

TRAIN_SKIP = 40  # articles 40+ train the scorer; evaluation text starts at article 0


def collect(model, tok, tokens: int, bos: bool):
    """Per layer: (keys [n, d], log mean attention received [n]) from one prompt of `tokens` tokens."""
    ids = tok(corpus(tokens * 8, skip=TRAIN_SKIP), add_special_tokens=False).input_ids[:tokens]
    if bos and tok.bos_token_id is not None:
        ids = [tok.bos_token_id] + ids[:-1]
    x = torch.tensor([ids])
    s = Session(model, Compose((H2O(budget=tokens + 1, recent=0, every=1),)))
    with torch.inference_mode():
        s.prefill(x)
    out = {}
    n = x.shape[1]
    seen_by = torch.arange(n, 0, -1, dtype=torch.float32)  # queries that can see token i
    for layer in s.cache.layers:
        if layer.ctx is None or layer.ctx.rank < 0 or not layer.groups:
            continue
        grp = layer.groups[0]
        # clones: tensors made under inference_mode cannot enter the autograd graph that training builds
        k = grp.store.kv()[0][0].float().clone()  # [H, n, d]
        score = grp.state["score"][0].float().clone()  # [H, n]
        # mean attention per query head that could see the token (score sums the KV head's query heads)
        target = torch.log(score / (seen_by * layer.ctx.layout.group) + 1e-9)
        out[layer.index] = (k.reshape(-1, k.shape[-1]), target.reshape(-1))
    return out


def train(pairs: dict, hidden: int, steps: int = 400, seed: int = 0) -> dict[int, list[torch.Tensor]]:
    """One MLP per layer, fitted with Adam on mean squared error; weights as the cache loads them."""
    g = torch.Generator().manual_seed(seed)
    weights = {}
    for index, (k, y) in pairs.items():
        d = k.shape[-1]
        w1 = (torch.randn(d, hidden, generator=g) / d ** 0.5).requires_grad_()
        b1 = torch.zeros(hidden, requires_grad=True)
        w2 = (torch.randn(hidden, 1, generator=g) / hidden ** 0.5).requires_grad_()
        b2 = torch.full((1,), float(y.mean()), requires_grad=True)
        opt = torch.optim.Adam([w1, b1, w2, b2], lr=3e-3)
        mean, std = y.mean(), y.std().clamp_min(1e-6)
        target = (y - mean) / std
        for _ in range(steps):
            opt.zero_grad()
            pred = (torch.relu(k @ w1 + b1) @ w2).squeeze(-1) + b2 - mean
            loss = ((pred / std - target) ** 2).mean()
            loss.backward()
            opt.step()
        weights[index] = [t.detach().contiguous() for t in (w1, b1, w2, b2)]
    return weights


def scorer_state(model, tok, name: str, hidden: int, bos: bool, tokens: int = 2048) -> dict:
    """Trained weights for `hidden` units, cached on disk per model."""
    key = hashlib.sha256(f"{name}-{hidden}-{tokens}-{TRAIN_SKIP}-v1".encode()).hexdigest()[:12]
    path = Path(cache_dir()) / "scorers" / f"{name}-{key}.pt"
    if path.exists():
        return torch.load(path, weights_only=True)  # a cache file is data, never code to run
    state = train(collect(model, tok, tokens, bos), hidden)
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp:
        torch.save(state, tmp)
    return state
