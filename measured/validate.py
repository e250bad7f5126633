"""`kvsim validate`: for every registered policy (and the example compositions) on small random models of
several architectures, run the harness and compare the physical cache bytes with kvsim's prediction,
after the prefill and after the last decode step, per sequence and shared. Any difference fails."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kvsim import Workload, load_hardware, parse_composition, predict
from kvsim.hf import from_hf_config
from kvsim.policies.examples import COMPOSITIONS, SMALL

from .loop import run_request
from .support import check

# Small configs, one per architecture family the harness drives.
ARCHS = {
    "llama-gqa": {"model_type": "llama", "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 4,
                  "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 128},
    "qwen2-bias": {"model_type": "qwen2", "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 3,
                   "num_attention_heads": 4, "num_key_value_heads": 1, "vocab_size": 128},
    "mistral-window": {"model_type": "mistral", "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
                       "num_attention_heads": 4, "num_key_value_heads": 2, "sliding_window": 20,
                       "vocab_size": 128},
    "gemma3-local-global": {"model_type": "gemma3_text", "hidden_size": 64, "intermediate_size": 96,
                            "num_hidden_layers": 6, "num_attention_heads": 2, "num_key_value_heads": 1,
                            "head_dim": 32, "sliding_window": 24, "vocab_size": 128,
                            "layer_types": ["sliding_attention"] * 2 + ["full_attention"] + ["sliding_attention"] * 2
                            + ["full_attention"]},
    "gpt2-mha": {"model_type": "gpt2", "n_embd": 64, "n_layer": 3, "n_head": 4, "vocab_size": 128,
                 "n_positions": 256},
}


@dataclass
class Check:
    arch: str
    policy: str
    phase: str
    measured: int
    predicted: int
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.measured == self.predicted


def tiny_model(arch: str, seed: int = 0):
    from transformers import AutoConfig, AutoModelForCausalLM
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(AutoConfig.for_model(**ARCHS[arch])).eval()


def check_policy(model, arch: str, specs: list[str], prompt: int, gen: int, batch: int) -> list[Check]:
    pol = parse_composition(specs)
    spec = from_hf_config(model.config.to_dict())
    ids = torch.randint(0, model.config.vocab_size, (batch, prompt))
    r = run_request(model, pol, ids, gen)
    hw = load_hardware("h100-sxm")  # bytes do not depend on the hardware; this one has every link
    name = pol.spec()
    out = []
    for phase, g, got in (("prefill", 1, r.bytes_prefill), ("end", gen, r.bytes_end)):
        pred = predict(spec, hw, pol, Workload(prompt=prompt, gen=g, batch=batch, kv_dtype="fp32"))
        # gen=1: resident after the prefill (and any split across layers); physical storage holds the policy state too
        seq_pred = int(pred.kv_cache_bytes) + int(pred.policy_state_bytes)
        out.append(Check(arch, name, phase, got["sequence"], seq_pred))
        out.append(Check(arch, name, phase + " shared", got["shared"], int(pred.kv_shared_bytes)))
    return out


def run(archs=None, prompt: int = 60, gen: int = 9, batch: int = 2, report=print, progress=None) -> list[Check]:
    """Every case on every architecture. With `progress` (measured.progress.Progress), one line or bar step per
    case and a line per mismatch; without, `report` gets every check."""
    checks: list[Check] = []
    cases = [[s] for s in SMALL.values()] + [list(c) for c in COMPOSITIONS]
    for arch in archs or ARCHS:
        model = tiny_model(arch)
        for specs in cases:
            point = f"{arch} {' + '.join(specs)}"
            names = [parse_composition([s]).parts[0].name for s in specs]
            why = check(names, model.config.model_type, "cuda")  # bytes do not depend on the device
            if why:
                if progress is not None:
                    progress.done(point, f"skipped: {why}")
                else:
                    report(f"{arch:20s} {' '.join(specs):60s} skipped: {why}")
                continue
            if progress is not None:
                progress.current(point)
            got = check_policy(model, arch, specs, prompt, gen, batch)
            checks.extend(got)
            for c in got:
                flag = "ok" if c.ok else "MISMATCH"
                line = (f"{arch:20s} {' '.join(specs)[:60]:60s} {c.phase:15s} measured {c.measured:>10,d}  "
                        f"predicted {c.predicted:>10,d}  {flag}")
                if progress is None:
                    report(line)
                elif not c.ok:
                    progress.note(line)
            if progress is not None:
                bad = sum(not c.ok for c in got)
                progress.done(point, f"{len(got)} checks, " + (f"{bad} MISMATCH" if bad else "all equal"))
    return checks
