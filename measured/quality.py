"""Quality with a compressed cache, on real weights and real text.

Perplexity: the first `context` tokens are prefilled (prefill-time policies compress them), then the next
`continuation` tokens are fed one at a time (decode-time policies evict as they go); perplexity is over
the continuation only, so every policy is measured while it is compressing.

Passkey: a five-digit key hidden at a relative depth in repeated filler text (Mohtashami & Jaggi, 2023),
followed by the question; correct when greedy decoding reproduces the key.
"""

from __future__ import annotations

import math
import random

import torch

from .loop import Session

FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
INTRO = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
         "I will quiz you about the important information there.\n")


def _ids(tok, text: str, bos: bool) -> list[int]:
    ids = tok(text, add_special_tokens=False).input_ids
    return ([tok.bos_token_id] if bos and tok.bos_token_id is not None else []) + ids


@torch.inference_mode()
def perplexity(model, tok, policy, text: str, context: int, continuation: int, bos: bool,
               scorer_state: dict | None = None) -> dict:
    ids = _ids(tok, text, bos)[: context + continuation + 1]
    if len(ids) < context + continuation + 1:
        raise ValueError(f"text too short: {len(ids)} tokens for {context} + {continuation}")
    x = torch.tensor([ids], device=next(model.parameters()).device)
    sess = Session(model, policy, scorer_state)
    logits = sess.prefill(x[:, :context])
    nll = 0.0
    for i in range(continuation):
        target = x[:, context + i]
        nll += float(torch.nn.functional.cross_entropy(logits.float(), target))
        logits = sess.step(target)
    return {"ppl": math.exp(nll / continuation), "nll": nll / continuation,
            "kv_cache_bytes": sess.cache.physical_bytes()["sequence"],
            "kv_shared_bytes": sess.cache.physical_bytes()["shared"]}


def passkey_prompt(tok, length: int, depth: float, key: int, bos: bool) -> list[int]:
    """A prompt of about `length` tokens with the key sentence at `depth` (0 = start, 1 = end)."""
    needle = f" The pass key is {key}. Remember it. {key} is the pass key. "
    question = "\nWhat is the pass key? The pass key is"
    fixed = len(_ids(tok, INTRO + needle + question, bos))
    per = len(tok(FILLER, add_special_tokens=False).input_ids)
    n_fill = max(1, (length - fixed) // per)
    before = int(round(depth * n_fill))
    text = INTRO + FILLER * before + needle + FILLER * (n_fill - before) + question
    return _ids(tok, text, bos)


@torch.inference_mode()
def passkey(model, tok, policy, length: int, depth: float, key: int, bos: bool, new_tokens: int = 8,
            scorer_state: dict | None = None) -> dict:
    ids = passkey_prompt(tok, length, depth, key, bos)
    x = torch.tensor([ids], device=next(model.parameters()).device)
    sess = Session(model, policy, scorer_state)
    nxt = sess.prefill(x).argmax(-1)
    out = [int(nxt)]
    for _ in range(new_tokens - 1):
        nxt = sess.step(nxt).argmax(-1)
        out.append(int(nxt))
    answer = tok.decode(out)
    return {"correct": str(key) in answer, "answer": answer.strip(), "prompt_tokens": len(ids),
            "kv_cache_bytes": sess.cache.physical_bytes()["sequence"]}


def passkey_keys(n: int, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    return [rng.randint(10000, 99999) for _ in range(n)]
