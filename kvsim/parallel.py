"""Tensor parallelism of attention heads, sharded as vLLM shards them (QKVParallelLinear,
ModelConfig.verify_with_parallel_config):

- query heads must divide by the tensor-parallel degree;
- tp <= KV heads: the KV heads must divide by tp, each device holds KV heads / tp of them;
- tp > KV heads: tp must be a multiple of the KV heads, each KV head is replicated on tp / KV heads devices
  and every device holds one (MQA and MLA's single latent "head": every device holds it).
Anything else is refused, as vLLM refuses it: splitting a head across devices is not something engines do.
"""

from __future__ import annotations

from .errors import KvsimError


def kv_heads_per_device(n_q_heads: int, n_kv_heads: int, tp: int, where: str = "") -> int:
    """KV heads one tensor-parallel device holds; KvsimError where vLLM would refuse the split."""
    at = f" ({where})" if where else ""
    if n_q_heads % tp:
        raise KvsimError(f"tensor-parallel degree {tp} does not divide the {n_q_heads} query heads{at}")
    if tp >= n_kv_heads:
        if tp % n_kv_heads:
            raise KvsimError(f"tensor-parallel degree {tp} is not a multiple of the {n_kv_heads} KV heads{at}: "
                             "they can be neither split evenly nor replicated")
        return 1
    if n_kv_heads % tp:
        raise KvsimError(f"tensor-parallel degree {tp} does not divide the {n_kv_heads} KV heads{at}")
    return n_kv_heads // tp


def check_model(model, tp: int) -> None:
    """Refuse a tensor-parallel degree that some attention layer of `model` cannot be sharded to."""
    if tp == 1:
        return
    seen = set()
    for i, layer in enumerate(model.layers):
        if not layer.has_kv and getattr(layer.mixer, "shares_kv_with", -1) < 0:
            continue  # SSM / linear-attention state: split by channels, no head constraint here
        lay = layer.mixer.kv_layout()
        key = (lay.n_q_heads, lay.n_kv_heads)
        if key not in seen:
            seen.add(key)
            kv_heads_per_device(lay.n_q_heads, lay.n_kv_heads, tp, f"{model.name} layer {i}")
