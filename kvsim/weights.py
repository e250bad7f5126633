"""Weight formats: how a checkpoint stores its weights, and in which dtype its matmuls and activations run.

One spec string names a format (CLI `--dtype`, `Workload.weight_dtype`, `ModelSpec.weight_dtype`; a preset's
or config.json's `torch_dtype` plus `quantization_config`):

  bf16 | fp16 | fp32   plain checkpoints: storage, matmuls and activations in that dtype
  fp8                  W8A8 float8 (e4m3) with per-tensor scales: matmuls at the device's dense fp8 peak
  fp8:block=128        the same with one fp32 scale per 128 x 128 block (DeepSeek-V3's released checkpoint)
  int8                 W8A8 int8 (SmoothQuant): matmuls at the int8 peak
  int8:weight-only     W8A16 (TensorRT-LLM int8 weight-only, GPTQ 8-bit): dequantised for 16-bit matmuls
  int4 = int4:group=128  AWQ/GPTQ W4A16: 4-bit weights, per group of 128 input channels an fp16 scale and a
                       4-bit zero point (packed like AWQ's qzeros): 4 + 20/128 bits per weight
  q4_0, q8_0           llama.cpp blocks of 32 weights with one fp16 scale: 4.5 and 8.5 bits per weight

Options after the colon, comma separated: `group=N` (int4; 0: one scale per output channel), `block=N` (fp8;
0: per tensor), `weight-only` (fp8, int8), `head=F` (embedding tables and the output head; default: the
compute dtype, i.e. they stay at 16 bits), `act=D` (activation and attention dtype of a quantized format;
default: the model's, bf16 when unknown).

Weight-only formats keep activations, attention and the matmuls at the compute dtype: only the bytes read
change. Per-tensor and per-channel scales (a few bytes per matrix row) are not counted; group and block scales
are. Norm weights stay at the compute dtype.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

from .errors import KvsimError

PLAIN = {"bf16": 16, "fp16": 16, "fp32": 32}
KINDS = ("bf16", "fp16", "fp32", "fp8", "int8", "int4", "q4_0", "q8_0")
_ALIASES = {"bfloat16": "bf16", "float16": "fp16", "half": "fp16", "float32": "fp32", "float": "fp32",
            "float8": "fp8", "e4m3": "fp8", "float8_e4m3fn": "fp8", "awq": "int4", "gptq": "int4"}
_W8A8 = ("fp8", "int8")  # formats whose matmuls can run on 8-bit units
_DEFAULT_GROUP = 128  # AutoAWQ's and AutoGPTQ's default group_size
_GGUF_BITS = {"q4_0": Fraction(9, 2), "q8_0": Fraction(17, 2)}  # (32 x bits + 16-bit scale) / 32


@dataclass(frozen=True)
class WeightFormat:
    kind: str  # one of KINDS
    group: int = 0  # int4: input channels per scale group (0: per output channel)
    block: int = 0  # fp8: side of the square blocks sharing one fp32 scale (0: one scale per tensor)
    weight_only: bool = False  # matmuls in the compute dtype (always so for int4 and the llama.cpp formats)
    head: str = ""  # format of embeddings and output head; "": the compute dtype
    act: str = ""  # activation dtype of a quantized format; "": bf16

    @property
    def plain(self) -> bool:
        return self.kind in PLAIN

    @property
    def compute_dtype(self) -> str:
        """Dtype of activations, attention and (for weight-only formats) the matmuls."""
        return self.kind if self.plain else (self.act or "bf16")

    @property
    def matmul_dtype(self) -> str:
        """Operand dtype of the weight matmuls: the 8-bit type for W8A8, else the compute dtype."""
        if self.kind in _W8A8 and not self.weight_only:
            return self.kind
        return self.compute_dtype

    @property
    def bits(self) -> Fraction:
        """Stored bits per linear-layer weight, group and block scales included."""
        if self.plain:
            return Fraction(PLAIN[self.kind])
        if self.kind in _GGUF_BITS:
            return _GGUF_BITS[self.kind]
        if self.kind == "int4":
            return Fraction(4) + (Fraction(16 + 4, self.group) if self.group else 0)
        if self.kind == "fp8" and self.block:
            return Fraction(8) + Fraction(32, self.block * self.block)
        return Fraction(8)

    @property
    def head_bits(self) -> Fraction:
        """Stored bits per embedding / output-head weight."""
        if not self.head:
            return Fraction(PLAIN[self.compute_dtype])
        if self.head == self.kind:
            return self.bits
        return parse(self.head).bits

    @property
    def spec(self) -> str:
        opts = []
        if self.kind == "int4":
            opts.append(f"group={self.group}")
        if self.block:
            opts.append(f"block={self.block}")
        if self.weight_only and self.kind in _W8A8:
            opts.append("weight-only")
        if self.head:
            opts.append(f"head={self.head}")
        if self.act:
            opts.append(f"act={self.act}")
        return self.kind + (":" + ",".join(opts) if opts else "")

    def __str__(self) -> str:
        return self.spec

    def with_act(self, act: str) -> "WeightFormat":
        """The same format with activations in `act` when it does not say otherwise (plain formats compute in
        their own dtype)."""
        if self.plain or self.act or act == "bf16":
            return self
        return WeightFormat(self.kind, self.group, self.block, self.weight_only, self.head, act)

    def weight_bytes(self, model) -> int:
        """Whole-model weight bytes: linear layers at `bits`, embeddings and output head at `head_bits`, norms at
        the compute dtype. Exact (rounded up to a byte)."""
        h = model.hidden
        body = sum(l.mixer.params(h) + (l.mlp.params(h) if l.mlp is not None else 0) for l in model.layers)
        head = model.embedding_params()
        rest = model.n_params() - body - head
        bits = body * self.bits + head * self.head_bits + rest * PLAIN[self.compute_dtype]
        return -(-bits.numerator // (8 * bits.denominator))


def _dtype_name(raw: str, what: str) -> str:
    name = _ALIASES.get(raw.strip().lower(), raw.strip().lower())
    if name not in PLAIN:
        raise KvsimError(f"weights: {what} must be one of {', '.join(PLAIN)}, got {raw!r}")
    return name


def _int(key: str, raw: str) -> int:
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value.is_integer() or value < 0 or value > 2**20:
        raise KvsimError(f"weights: {key} must be a whole number from 0 to {2**20}, got {raw!r}")
    return int(value)


def parse(spec) -> WeightFormat:
    """'int4:group=128,head=int4' -> WeightFormat; raise KvsimError with the valid spellings."""
    if isinstance(spec, WeightFormat):
        return spec
    text = str(spec).strip()
    name, _, rest = text.partition(":")
    kind = _ALIASES.get(name.strip().lower(), name.strip().lower())
    if kind not in KINDS:
        raise KvsimError(f"unknown weight format {name!r}; valid: {', '.join(KINDS)} "
                         "(options: int4:group=N, fp8:block=N, int8:weight-only, head=F, act=D)")
    fields = {"group": _DEFAULT_GROUP if kind == "int4" else 0, "block": 0, "weight_only": kind not in _W8A8,
              "head": "", "act": ""}
    allowed = {"int4": {"group"}, "fp8": {"block", "weight-only"}, "int8": {"weight-only"}}.get(kind, set())
    allowed = allowed | ({"head", "act"} if kind not in PLAIN else set())
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, raw = (s.strip() for s in item.partition("="))
        key = key.lower()
        if key not in allowed:
            valid = ", ".join(sorted(allowed)) or "none"
            raise KvsimError(f"weight format {kind} has no option {key!r} (valid: {valid})")
        if key == "weight-only":
            if eq:
                raise KvsimError("weights: weight-only takes no value")
            fields["weight_only"] = True
        elif not eq:
            raise KvsimError(f"weights: {key} needs a value ({key}=...)")
        elif key in ("group", "block"):
            fields[key] = _int(key, raw)
        elif key == "act":
            fields["act"] = _dtype_name(raw, "act")
        else:
            head = _ALIASES.get(raw.lower(), raw.lower())
            if head not in KINDS:
                raise KvsimError(f"weights: head must be one of {', '.join(KINDS)}, got {raw!r}")
            fields["head"] = head
    return WeightFormat(kind, **fields)


def canonical(spec) -> str:
    return parse(spec).spec


def resolve(spec, default) -> WeightFormat:
    """The format a run uses: `spec` (None: `default`), with the activation dtype of `default` (the model's own
    format) unless `spec` names one."""
    base = parse(default)
    if spec is None:
        return base
    return parse(spec).with_act(base.compute_dtype)


def on_device(fmt: WeightFormat, hw) -> tuple[str, str, list[str]]:
    """(activation dtype, matmul dtype, notes) of `fmt` on `hw`. A device without bf16 units runs a bf16 model
    in fp16 (vLLM's dtype=auto does so on pre-Ampere GPUs); a device without the 8-bit units a W8A8 format
    needs dequantises the weights for 16-bit matmuls (vLLM's FP8 Marlin path)."""
    act, notes = fmt.compute_dtype, []
    if act == "bf16" and "bf16" not in hw.flops and "fp16" in hw.flops:
        notes.append(f"{hw.name} has no bf16 units: the bf16 weights and activations run in fp16, at its fp16 "
                     "rate (as vLLM's dtype=auto does there)")
        act = "fp16"
    elif act not in hw.flops:
        notes.append(f"{hw.name} lists no {act} rate: {act} work is timed at its {hw.runs_on(act)} rate")
    gemm = fmt.matmul_dtype if fmt.matmul_dtype != fmt.compute_dtype else act
    if gemm != act and gemm not in hw.flops:
        notes.append(f"{hw.name} has no {gemm} units: {fmt.spec} weights are dequantised to {act} for the "
                     "matmuls (weight-only)")
        gemm = act
    return act, gemm, notes
