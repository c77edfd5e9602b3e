"""Every option of a pruning run, with its one default, its validation and its help text.

The option groups below are used by the Python API (`onnxprune.prune`'s keyword arguments are their
fields) and by the command line, whose `prune` options are generated from them (`onnxprune.cli.options`).
A value that is out of range raises `OptionError`, which names the option as the caller spelt it: the
API's keyword (`batch_size=0`) here, the command line's flag (`--batch-size 0`) there. See
docs/DESIGN.md, "Options".
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from .errors import UserError


class OptionError(UserError):
    """An option value that is out of range or of the wrong kind."""

    def __init__(self, option: str, value: Any, reason: str):
        self.option, self.value, self.reason = option, value, reason
        super().__init__(f"{option}={value!r}: {reason}")

    def flag_message(self, flag: str | None = None) -> str:
        """The same error with the option spelt as a command-line flag (`flag`, or the name with dashes)."""
        flag = flag or f"--{self.option.replace('_', '-')}"
        shown = "" if self.value is None else f" {_shown(self.value)}"
        return f"{flag}{shown}: {self.reason}"


def _shown(value: Any) -> str:
    return value.value if isinstance(value, Enum) else str(value)


class Choice(str, Enum):
    """An option whose value is one of a fixed set of words."""

    @classmethod
    def parse(cls, option: str, value: Any):
        if isinstance(value, cls):
            return value
        try:
            return cls(value)
        except ValueError:
            raise OptionError(option, value, f"choose from {', '.join(m.value for m in cls)}") from None

    def __str__(self) -> str:
        return self.value


class Refit(Choice):
    """What is corrected after selection: nothing, one scale per kept channel, or the consumers' weights."""
    NONE = "none"
    GAMMA = "gamma"
    FULL = "full"


class Allocation(Choice):
    """How a MACs/params/latency target is shared among groups (auto: output with calibration data, uniform
    without; docs/DESIGN.md, "Counts and allocation")."""
    AUTO = "auto"
    UNIFORM = "uniform"
    LOSS = "loss"
    OUTPUT = "output"


class OutputLossKind(Choice):
    """The global methods' output discrepancy (auto: kl for a class distribution, mse otherwise)."""
    AUTO = "auto"
    KL = "kl"
    MSE = "mse"


class GroupKind(Choice):
    """Which groups a run prunes: all, attention heads only, or every other group (channels) only."""
    ALL = "all"
    HEADS = "heads"
    CHANNELS = "channels"


class AttentionSplit(Choice):
    """What an attention block's prunable channels are (docs/DESIGN.md, "Dims within heads"): whole heads, the
    dims within every head (the Q·K dims and the V dims, each head keeping the same number), or auto: dims
    with calibration data wherever a block's dims prune, heads elsewhere and without data."""
    AUTO = "auto"
    HEADS = "heads"
    DIMS = "dims"


class EvalMetric(Choice):
    """What `eval` measures: auto (by the output kind), a classifier's agreement, or embeddings' cosine."""
    AUTO = "auto"
    CLASSIFICATION = "classification"
    COSINE = "cosine"


class Norm(Choice):
    """The norm of the magnitude criterion."""
    L1 = "l1"
    L2 = "l2"


class Provider(Choice):
    """The ONNX Runtime execution provider a latency is measured on."""
    CPU = "cpu"
    CUDA = "cuda"
    TENSORRT = "tensorrt"


class Preprocess(Choice):
    """Preprocessing presets for image folders."""
    NONE = "none"
    IMAGENET = "imagenet"


def _help(text: str, **cli: Any) -> dict:
    return {"help": text, **cli}


def _int(option: str, value: Any, low: int, allow_none: bool = False, high: int | None = None) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise OptionError(option, value, "must be an integer")
    value = int(value)
    if value < low:
        raise OptionError(option, value, f"must be an integer >= {low}")
    if high is not None and value > high:
        raise OptionError(option, value, f"must be an integer in {low}..{high}")
    return value


# an image side above this is a typo, not a resolution: a 3-channel float32 image of it is already 3 GB
MAX_IMAGE_SIZE = 16384
# an input dimension above this (2**31 - 1) is out of what ONNX Runtime indexes
MAX_DIM = 2**31 - 1


def _fraction(option: str, value: Any, low_open: bool, high: float, high_open: bool,
              allow_none: bool = False) -> float | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool):
        raise OptionError(option, value, "must be a number")
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise OptionError(option, value, "must be a number") from None
    lo_ok = value > 0 if low_open else value >= 0
    hi_ok = value < high if high_open else value <= high
    if not (math.isfinite(value) and lo_ok and hi_ok):
        interval = f"{'(' if low_open else '['}0, {high:g}{')' if high_open else ']'}"
        raise OptionError(option, value, f"must be in {interval}")
    return value


AUTO = "auto"


def _round_to(value: Any) -> int | str:
    """`round_to`: 'auto' or an integer >= 1 (a command-line string of digits is an integer)."""
    if isinstance(value, str) and value.strip().lower() == AUTO:
        return AUTO
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise OptionError("round_to", value, "must be an integer >= 1 or 'auto'")
    return int(value)


@dataclass(frozen=True)
class TargetOptions:
    """How much of the model to keep, and how the budget is shared among groups."""
    keep_ratio: float | None = field(default=None, metadata=_help(
        "Keep this fraction of the channels of every group.", target=True))
    flops: float | None = field(default=None, metadata=_help(
        "Keep this fraction of the original MACs (within 2%).", target=True))
    params: float | None = field(default=None, metadata=_help(
        "Keep this fraction of the original parameters (within 2%).", target=True))
    latency: float | None = field(default=None, metadata=_help(
        "Keep this fraction of the original's latency, measured on --provider at --latency-batch.", target=True))
    allocate: Allocation = field(default=Allocation.AUTO, metadata=_help(
        "Spread a --flops/--params/--latency target uniformly, by local imitation loss per MAC (loss), or by "
        "the network's output loss per MAC when each group alone is pruned (output); auto: output with --calib "
        "(uniform where the torch twin cannot run the model, said in the log and the report), uniform without."))
    round_to: int | str = field(default=AUTO, metadata=_help(
        "Kept counts are multiples of K; auto: per group, the rounding measured fastest near its count.",
        cli_type=str))
    min_channels: int = field(default=1, metadata=_help("Never keep fewer channels in a group."))
    keep: dict = field(default_factory=dict, metadata=_help(
        "Per-group kept count, GROUP=N (repeatable).", cli=False))
    group_kind: GroupKind = field(default=GroupKind.ALL, metadata=_help(
        "Prune only groups of this kind (heads: attention heads, or with --attention dims the dims within "
        "heads); the others keep all their channels."))
    provider: Provider = field(default=Provider.CPU, metadata=_help(
        "Execution provider latencies are measured on (--latency, --round-to auto)."))
    latency_batch: int = field(default=1, metadata=_help("Batch size latencies are measured at."))
    latency_threads: int | None = field(default=None, metadata=_help(
        "Intra-op threads latencies are measured with (default: the cores this process may use)."))
    latency_fp16: bool = field(default=False, metadata=_help(
        "Measure latencies in fp16 (cuda: the model converted; tensorrt: fp16 kernels allowed)."))

    def __post_init__(self):
        given = [n for n in TARGETS if getattr(self, n) is not None]
        for name in given:
            object.__setattr__(self, name, _fraction(name, getattr(self, name), True, 1.0, False))
        object.__setattr__(self, "allocate", Allocation.parse("allocate", self.allocate))
        object.__setattr__(self, "round_to", _round_to(self.round_to))
        object.__setattr__(self, "provider", Provider.parse("provider", self.provider))
        object.__setattr__(self, "latency_batch", _int("latency_batch", self.latency_batch, 1))
        object.__setattr__(self, "latency_threads", _int("latency_threads", self.latency_threads, 1, allow_none=True))
        if not isinstance(self.latency_fp16, bool):
            raise OptionError("latency_fp16", self.latency_fp16, "must be True or False")
        object.__setattr__(self, "min_channels", _int("min_channels", self.min_channels, 1))
        keep = {}
        for gid, n in dict(self.keep or {}).items():
            keep[_int("keep", gid, 0)] = _int("keep", n, 1)
        object.__setattr__(self, "keep", keep)
        object.__setattr__(self, "group_kind", GroupKind.parse("group_kind", self.group_kind))

    def check_one_target(self) -> tuple[str, float]:
        """(kind, fraction) of the one target given: 'keep_ratio', 'flops', 'params' or 'latency'."""
        given = [n for n in TARGETS if getattr(self, n) is not None]
        if len(given) != 1:
            raise UserError("give exactly one target: keep_ratio, flops, params or latency")
        return given[0], getattr(self, given[0])


TARGETS = ("keep_ratio", "flops", "params", "latency")


@dataclass(frozen=True)
class CalibrationOptions:
    """How calibration data is read and sampled."""
    batch_size: int = field(default=32, metadata=_help("Calibration batch size."))
    max_positions: int | None = field(default=64, metadata=_help(
        "Spatial positions sampled per image and layer for statistics (0: all)."))
    holdout: float = field(default=0.1, metadata=_help("Share of calibration samples held out."))
    preprocess: Preprocess = field(default=Preprocess.NONE, metadata=_help("Preset for image folders."))
    image_size: int | None = field(default=None, metadata=_help(
        "Image side for image folders (default: the model's)."))
    token_mask_input: str = field(default="attention_mask", metadata=_help(
        "Model input marking real tokens (1) and padding (0): padding rows are left out of the statistics "
        "('' to use every row)."))
    augment: int = field(default=0, metadata=_help(
        "Image folders: N random-resized, randomly flipped crops per image besides its centre crop "
        "(seeded by --seed); held-out samples are whole images."))

    def __post_init__(self):
        object.__setattr__(self, "batch_size", _int("batch_size", self.batch_size, 1))
        positions = _int("max_positions", self.max_positions, 0, allow_none=True)
        object.__setattr__(self, "max_positions", positions or None)
        object.__setattr__(self, "holdout", _fraction("holdout", self.holdout, False, 1.0, True))
        object.__setattr__(self, "preprocess", Preprocess.parse("preprocess", self.preprocess))
        object.__setattr__(self, "image_size", _int("image_size", self.image_size, 1, allow_none=True,
                                                    high=MAX_IMAGE_SIZE))
        if not isinstance(self.token_mask_input, str):
            raise OptionError("token_mask_input", self.token_mask_input, "must be an input name or ''")
        object.__setattr__(self, "augment", _int("augment", self.augment, 0))


@dataclass(frozen=True)
class SelectionOptions:
    """How channels are chosen within a group."""
    method: str = field(default="greedy-local", metadata=_help("How channels are chosen.", choices="methods"))
    norm: Norm = field(default=Norm.L1, metadata=_help("Norm for --method magnitude."))
    seed: int = field(default=0, metadata=_help("Seed for --method random and position sampling."))

    def __post_init__(self):
        if not isinstance(self.method, str):  # the name is checked against the registry by the pipeline
            raise OptionError("method", self.method, "must be a method name")
        object.__setattr__(self, "norm", Norm.parse("norm", self.norm))
        object.__setattr__(self, "seed", _int("seed", self.seed, 0))


@dataclass(frozen=True)
class RefitOptions:
    """What is corrected after selection."""
    refit: Refit | None = field(default=None, metadata=_help(
        "Re-fit after selection  [default: full with --calib, none without]"))
    ridge: float = field(default=1e-3, metadata=_help("Ridge strength without a held-out split.", cli=False))
    residual_target: bool = field(default=True, metadata=_help(
        "Where a consumer's output is added to a residual stream, imitate the original sum: the re-fit also "
        "corrects the error the layers pruned before left in that stream.", flag=True))
    refit_sweep: bool = field(default=True, metadata=_help(
        "With the full re-fit, once every group is decided, re-fit each group's consumers once more, in the same "
        "order, on the network as finally pruned; kept only if the held-out output loss falls.", flag=True))
    bias_correction: bool = field(default=True, metadata=_help(
        "After the full re-fit, shift the biases of the Conv/Gemm layers and Linear layers (MatMul + Add) so that "
        "each kept channel's mean on the calibration data is the original's; kept only if the held-out output loss "
        "falls.", flag=True))

    def __post_init__(self):
        for name in ("residual_target", "refit_sweep", "bias_correction"):
            if not isinstance(getattr(self, name), bool):
                raise OptionError(name, getattr(self, name), "must be true or false")
        if self.refit is not None:
            object.__setattr__(self, "refit", Refit.parse("refit", self.refit))
        if isinstance(self.ridge, bool) or not isinstance(self.ridge, (int, float)) or not \
                (math.isfinite(self.ridge) and self.ridge >= 0):
            raise OptionError("ridge", self.ridge, "must be a number >= 0")

    def resolved(self, has_calibration: bool) -> Refit:
        return self.refit or (Refit.FULL if has_calibration else Refit.NONE)


@dataclass(frozen=True)
class GlobalOptions:
    """Global imitation: the output discrepancy and what it is measured on."""
    output_loss: OutputLossKind = field(default=OutputLossKind.AUTO, metadata=_help(
        "Global methods: discrepancy of the outputs (auto: kl for a classifier's outputs, mse otherwise)."))
    global_samples: int = field(default=256, metadata=_help(
        "Global methods: calibration samples the output loss is measured on."))
    taylor_rounds: int = field(default=4, metadata=_help("Backward passes per group for greedy-taylor.",
                                                          cli=False))
    exact_limit: int = field(default=32, metadata=_help(
        "greedy-global is exact up to this many channels, Taylor above.", cli=False))

    def __post_init__(self):
        object.__setattr__(self, "output_loss", OutputLossKind.parse("output_loss", self.output_loss))
        object.__setattr__(self, "global_samples", _int("global_samples", self.global_samples, 1))
        object.__setattr__(self, "taylor_rounds", _int("taylor_rounds", self.taylor_rounds, 1))
        object.__setattr__(self, "exact_limit", _int("exact_limit", self.exact_limit, 0))


def parse_input_shape(text: str) -> tuple[str | None, tuple[int, ...]]:
    """`NAME=D0,D1,...` as (NAME, dims). The conventions of onnxsim's `--overwrite-input-shape`: the name
    ends at the last separator (`=`, or `:` as onnxsim writes it, so names such as tf2onnx's `input:0`
    work), and a single-input model may omit it (`1,3,224,224`, the name is then None); Polygraphy's
    brackets (`NAME:[1,3,224,224]`) are accepted too."""
    if not isinstance(text, str):
        raise OptionError("input_shapes", text, "expected NAME=D0,D1,... with positive integers")
    name, sep, dims = text.rpartition("=")
    if not sep:
        name, sep, dims = text.rpartition(":")
    dims = dims.strip()
    if dims[:1] + dims[-1:] in ("[]", "()"):
        dims = dims[1:-1]
    return (name if sep else None), _dims(text, [d.strip() for d in dims.split(",")])


def _dims(shown: Any, dims) -> tuple[int, ...]:
    out = []
    for d in dims:
        if isinstance(d, str):
            if not d.isascii() or not d.isdigit():
                raise OptionError("input_shapes", shown, "expected NAME=D0,D1,... with positive integers")
            d = int(d)
        if isinstance(d, bool) or not isinstance(d, numbers.Integral) or not 1 <= int(d) <= MAX_DIM:
            raise OptionError("input_shapes", shown, f"dimensions must be integers in 1..{MAX_DIM}")
        out.append(int(d))
    if not out:
        raise OptionError("input_shapes", shown, "expected NAME=D0,D1,... with positive integers")
    return tuple(out)


@dataclass(frozen=True)
class ModelOptions:
    """What the model file may not say: the shapes of inputs whose dimensions are symbolic."""
    input_shapes: dict | None = field(default=None, metadata=_help(
        "Shapes of model inputs, name -> dims (batch first), for the MACs of layers whose sizes are symbolic; "
        "default: the first calibration batch's shape.", cli=False))
    attention: AttentionSplit = field(default=AttentionSplit.AUTO, metadata=_help(
        "Attention blocks prune whole heads, or the dims within every head (both re-based on the calibration "
        "data; needs --calib); auto: dims with --calib wherever a block's dims prune, heads elsewhere."))

    def __post_init__(self):
        object.__setattr__(self, "attention", AttentionSplit.parse("attention", self.attention))
        given = self.input_shapes
        if given is None:
            return
        if not isinstance(given, dict):
            raise OptionError("input_shapes", given, "must map input names to shapes")
        shapes: dict[str | None, tuple[int, ...]] = {}
        for name, dims in given.items():
            shown = f"{name}={dims}"
            if name is not None and not isinstance(name, str):
                raise OptionError("input_shapes", shown, "input names must be strings")
            if isinstance(dims, str):
                dims = parse_input_shape(dims)[1]
            elif not isinstance(dims, (list, tuple)):
                raise OptionError("input_shapes", shown, "a shape is a sequence of integers")
            shapes[name or None] = _dims(shown, dims)
        object.__setattr__(self, "input_shapes", shapes or None)


@dataclass(frozen=True)
class EvalOptions:
    """`eval`: how the two models are run on the data."""
    batch_size: int = field(default=256, metadata=_help("Evaluation batch size."))
    metric: EvalMetric = field(default=EvalMetric.AUTO, metadata=_help(
        "classification: agreement, KL, accuracy; cosine: embeddings' cosine similarity and nearest-neighbour "
        "agreement; auto: cosine unless the output is a classifier's."))

    def __post_init__(self):
        object.__setattr__(self, "batch_size", _int("batch_size", self.batch_size, 1))
        object.__setattr__(self, "metric", EvalMetric.parse("metric", self.metric))


@dataclass(frozen=True)
class DistillOptions:
    """Label-free distillation after the layer-wise pruning (docs/DESIGN.md, "Distillation")."""
    distill: bool = field(default=False, metadata=_help(
        "Train the pruned model's weights to match the original's outputs on the calibration data, with "
        "early stopping on the held-out calibration images; no labels.", flag=True))
    distill_time: float = field(default=300.0, metadata=_help(
        "Distillation: stop after this many seconds (the best held-out state is kept)."))
    distill_epochs: int = field(default=30, metadata=_help(
        "Distillation: at most this many epochs (one fresh crop of every calibration image each, for "
        "image folders)."))
    # 1e-5 with outputs only: ImageNet MobileNetV2, fold A, 70% MACs, top-1 54.8% -> 59.2%; 1e-4 made the
    # held-out loss worse from the first epoch (README, "ImageNet")
    distill_lr: float = field(default=1e-5, metadata=_help("Distillation: Adam learning rate."))
    distill_features: float = field(default=0.0, metadata=_help(
        "Distillation: weight of the intermediate-feature MSE (consumer outputs, normalised) beside the "
        "KL of the outputs (0: outputs only)."))
    distill_patience: int = field(default=2, metadata=_help(
        "Distillation: stop after this many epochs in a row without a lower held-out loss (each goes back "
        "to the best weights with a third of the learning rate).", cli=False))

    def __post_init__(self):
        if not isinstance(self.distill, bool):
            raise OptionError("distill", self.distill, "must be true or false")
        for name in ("distill_time", "distill_lr", "distill_features"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) or v < 0:
                raise OptionError(name, v, "must be a number >= 0")
            object.__setattr__(self, name, float(v))
        if self.distill_time == 0:
            raise OptionError("distill_time", self.distill_time, "must be > 0")
        object.__setattr__(self, "distill_epochs", _int("distill_epochs", self.distill_epochs, 1))
        object.__setattr__(self, "distill_patience", _int("distill_patience", self.distill_patience, 1))


GROUPS = (TargetOptions, SelectionOptions, CalibrationOptions, RefitOptions, GlobalOptions, ModelOptions,
          DistillOptions)


@dataclass(frozen=True)
class PruneOptions:
    """All options of one pruning run, by group."""
    target: TargetOptions = field(default_factory=TargetOptions)
    selection: SelectionOptions = field(default_factory=SelectionOptions)
    calibration: CalibrationOptions = field(default_factory=CalibrationOptions)
    refit: RefitOptions = field(default_factory=RefitOptions)
    global_imitation: GlobalOptions = field(default_factory=GlobalOptions)
    model: ModelOptions = field(default_factory=ModelOptions)
    distill: DistillOptions = field(default_factory=DistillOptions)

    @classmethod
    def from_flat(cls, **values: Any) -> PruneOptions:
        """Options from flat keyword arguments (`onnxprune.prune`'s), each routed to its group."""
        groups: dict[type, dict] = {g: {} for g in GROUPS}
        owner = {f.name: g for g in GROUPS for f in dataclasses.fields(g)}
        for name, value in values.items():
            if name not in owner:
                raise UserError(f"unknown option '{name}'")
            groups[owner[name]][name] = value
        return cls(TargetOptions(**groups[TargetOptions]), SelectionOptions(**groups[SelectionOptions]),
                   CalibrationOptions(**groups[CalibrationOptions]), RefitOptions(**groups[RefitOptions]),
                   GlobalOptions(**groups[GlobalOptions]), ModelOptions(**groups[ModelOptions]),
                   DistillOptions(**groups[DistillOptions]))


def flat_defaults() -> dict[str, Any]:
    """Every option's name and default, as `onnxprune.prune` takes them."""
    out = {}
    for g in GROUPS:
        for f in dataclasses.fields(g):
            out[f.name] = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    return out
