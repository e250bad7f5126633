"""kvsim: what will this KV-cache choice cost me?

    from kvsim import load_model, load_hardware, parse_composition, predict, Workload
    pred = predict(load_model("llama-3-8b"), load_hardware("h100-sxm"),
                   parse_composition(["h2o:budget=1024", "kivi:bits=2"]), Workload(prompt=[4096, 32768]))

The analytic core imports numpy only.
"""

from .errors import KvsimError
from .hardware import HardwareSpec
from .hf import from_hf_config, load_json
from .model import MLA, MLP, Attention, Layer, LinearAttention, Mamba, ModelSpec, MoE, uniform
from .policies import Compose, compose, make, parse_composition, parse_policy
from .predict import Prediction, Workload, predict
from .presets import engine_names, hardware_names, load_engine, load_hardware, load_model, model_names
from .profile import DATASHEET, Profile, load_profile
from .serving import Engine

__version__ = "0.1.0"

__all__ = ["MLA", "MLP", "Attention", "Compose", "DATASHEET", "Engine", "HardwareSpec", "KvsimError", "Layer",
           "LinearAttention", "Mamba", "ModelSpec", "MoE", "Prediction", "Profile", "Workload", "compose",
           "engine_names", "from_hf_config", "hardware_names", "load_engine", "load_hardware", "load_json",
           "load_model", "load_profile", "make", "model_names", "parse_composition", "parse_policy", "predict", "uniform"]
