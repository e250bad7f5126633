"""Every registered policy with parameters sized for small workloads (tens of tokens).

Generic tests (tests/) and `kvsim validate` (measured/) run over this table, so a new policy is covered by
every invariant and by the predicted == physical bytes check as soon as it is listed here;
tests/test_policies.py fails while the registry and this table disagree.
"""

SMALL = {
    "full": "full",
    "window": "window:size=24",
    "streamingllm": "streamingllm:sinks=4,window=20",
    "h2o": "h2o:budget=24,recent=8",
    "tova": "tova:budget=24",
    "snapkv": "snapkv:budget=24,window=8,kernel=3",
    "pyramidkv": "pyramidkv:budget=24,window=8,kernel=3,beta=4",
    "dynamickv": "dynamickv:budget=24,window=8,kernel=3,quantum=4",
    "adakv": "adakv:budget=24,window=8,kernel=3",
    "duo": "duo:retrieval=0.5,sinks=4,window=12",
    "quest": "quest:page=8,budget=16",
    "rocketkv": "rocketkv:budget=32,window=8,kernel=3,page=8,read_budget=16",
    "lru": "lru:budget=24",
    "keynorm": "keynorm:budget=24",
    "kmeans": "kmeans:clusters=8,recent=8,every=4,iters=3",
    "learned": "learned:budget=24,hidden=8",
    "minicache": "minicache:start=0.5,retain=0.1",
    "quant": "quant:bits=4,group=16",
    "int8": "int8",
    "int4": "int4:group=16",
    "fp8": "fp8",
    "kivi": "kivi:bits=2,group=8,residual=16",
    "mixed": "mixed:retain=0.5,high=0.5,k_bits=3,v_bits=2",
    "lowrank": "lowrank:rank=8",
    "offload": "offload:fraction=0.5",
}

COMPOSITIONS = [
    ("h2o:budget=24,recent=8", "kivi:bits=2,group=8,residual=16"),
    ("snapkv:budget=24,window=8,kernel=3", "int4:group=16"),
    ("tova:budget=24", "lowrank:rank=8", "int8"),
    ("snapkv:budget=32,window=8,kernel=3", "quest:page=8,budget=16"),
    ("minicache:start=0.5,retain=0.1", "int8"),
    ("adakv:budget=32,window=8,kernel=3,quantum=16", "kivi:bits=2,group=8,residual=16"),
    ("streamingllm:sinks=4,window=20", "fp8", "offload:fraction=1.0"),
    ("kmeans:clusters=8,recent=8,every=4,iters=3", "quant:bits=4,axis=channel,group=8"),
    ("mixed:retain=0.5,high=0.5,k_bits=3,v_bits=2,every=3",),
]
