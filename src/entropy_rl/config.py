"""Typed configuration: one frozen dataclass per concern, loaded strictly from ``params.yaml``.

``params.yaml`` has three top-level keys that this module reads:

* ``profiles``: the *active* profiles (``dvc repro`` expands its stages over exactly these);
* ``more_profiles``: profiles that exist but are not run by default (move one into ``profiles`` to run it);
* ``objectives``: one entry per objective name with that objective's settings.

A profile may say ``extends: <other profile>`` and override any subset of its sections; a profile without
``extends`` states each of its sections (``data``, ``model``, ``sft``, ``rl``, ``eval``; ``{}`` = the defaults).
Every unknown key, wrong type or invalid value raises :class:`ConfigError` before any work starts, with a one-line
message that names the full key path first: ``profiles.tiny.rl.grad_clip: must be > 0, got -1.0``.

Every numeric field of every config class has a declared :class:`Range` (``RANGES`` of its class, merged over the
class's bases); non-finite values (NaN, +-inf) are refused unless a range says ``infinite=True`` (none does now).
``params.yaml`` is read by :func:`read_params` only, with :class:`ParamsLoader`: PyYAML's safe loader that refuses
duplicate keys and reads floats the YAML 1.2 way (``3e-4`` is a number, not a string).
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A bad key or value in params.yaml (or in notebook parameters); the message names it."""


# ----------------------------------------------------------------------------------------------------------
# The names params.yaml accepts. The module that owns each registry registers exactly these (a name it registers
# that is not declared here raises; a test checks that every declared name is registered).
# ----------------------------------------------------------------------------------------------------------
TASKS = ("arithmetic", "math")
"""`data.task`: entropy_rl.data.TASKS"""
TRAIN_SOURCES = ("math_l3_5", "gsm8k", "dapo17k")
"""`data.sources`: entropy_rl.data.TRAIN_SOURCES"""
TEMPLATES = ("boxed", "qwen_math", "plain")
"""`rl.template`, `eval.template`: entropy_rl.prompts.TEMPLATES"""
BACKENDS = ("hf", "vllm")
"""`rl.rollout.backend`, `eval.backend`: entropy_rl.rollout.BACKENDS (one registry for training and evaluation)"""
EVAL_SETS = ("gsm8k", "math500", "aime24", "aime25", "amc23", "minerva", "olympiadbench")
"""`eval.benchmarks`: entropy_rl.evalsets.EVAL_SETS"""
OPTIMIZERS = ("adamw", "paged_adamw_8bit")
"""`rl.optimizer`"""
SECTIONS = ("data", "model", "sft", "rl", "eval")
"""the sections of a profile; a profile without `extends` states each of them"""
TEMPERATURE_RANGE = (0.01, 10.0)
"""`rl.temperature`, `eval.temperature`: logits / T overflows for tiny T, and T > 10 samples noise"""

_YAML_BOOL_HINT = "YAML reads unquoted on/off/yes/no/true/false as true/false: quote it, e.g. \"on\""


# ----------------------------------------------------------------------------------------------------------
# The params.yaml loader
# ----------------------------------------------------------------------------------------------------------
class ParamsLoader(yaml.SafeLoader):
    """PyYAML's safe loader, with YAML 1.2 floats (``3e-4``, ``1e-40``, ``1.0e5``: numbers; YAML 1.1 reads them as
    strings). Duplicate keys are refused by :func:`load_yaml` (PyYAML keeps the last one silently)."""


ParamsLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?$"),
    list("-+0123456789."),
)

_MERGE_TAG = "tag:yaml.org,2002:merge"


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _node_key(node: yaml.Node) -> str:
    return node.value if isinstance(node, yaml.ScalarNode) else f"<{node.id}>"


def _check_duplicates(node: yaml.Node, path: str, source: str, seen: set[int]) -> None:
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        lines: dict[tuple[str, str], int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:  # `<<: *anchor`: explicit keys beside it may override the merged ones
                continue
            key = (key_node.tag, _node_key(key_node))
            line = key_node.start_mark.line + 1
            where = f"{path}.{key[1]}" if path else key[1]
            if key in lines:
                raise ConfigError(f"{where}: duplicate key (lines {lines[key]} and {line} of {source}); YAML keeps "
                                  "only the last one: remove one")
            lines[key] = line
            _check_duplicates(value_node, where, source, seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _check_duplicates(item, f"{path}[{i}]", source, seen)


def load_yaml(text: str, source: str = "params.yaml") -> Any:
    """Parse ``text`` with :class:`ParamsLoader`; a duplicate key or a syntax error raises :class:`ConfigError`
    (one line, with the line number). The result is the caller's own (a copy of a parse cached by content)."""
    return copy.deepcopy(_parse(text, source))


@functools.lru_cache(maxsize=16)
def _parse(text: str, source: str) -> Any:
    loader = ParamsLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_duplicates(node, "", source, set())
        return loader.construct_document(node)
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML: {_one_line(e)}") from None
    finally:
        loader.dispose()


# ----------------------------------------------------------------------------------------------------------
# Ranges of numeric fields
# ----------------------------------------------------------------------------------------------------------
def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else repr(x)


@dataclass(frozen=True)
class Range:
    """The valid values of a numeric field: finite, within optional bounds."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    note: str = ""
    """said in the message after the range, e.g. `a fraction, not a percent`"""
    infinite: bool = False
    """+-inf is valid (within the bounds); NaN never is"""

    def __contains__(self, v: float) -> bool:
        if isinstance(v, float) and (math.isnan(v) or (math.isinf(v) and not self.infinite)):
            return False
        if self.lo is not None and (v < self.lo or (self.lo_open and v == self.lo)):
            return False
        if self.hi is not None and (v > self.hi or (self.hi_open and v == self.hi)):
            return False
        return True

    def __str__(self) -> str:
        if self.lo is not None and self.hi is not None:
            s = f"in {'(' if self.lo_open else '['}{_fmt(self.lo)}, {_fmt(self.hi)}{')' if self.hi_open else ']'}"
        elif self.lo is not None:
            s = f"{'>' if self.lo_open else '>='} {_fmt(self.lo)}"
        elif self.hi is not None:
            s = f"{'<' if self.hi_open else '<='} {_fmt(self.hi)}"
        else:
            s = "a finite number"
        return f"{s} ({self.note})" if self.note else s

    def check(self, where: str, value: Any) -> None:
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            return  # types are checked by from_dict
        if value not in self:
            finite = isinstance(value, float) and not math.isfinite(value) and (self.lo is not None or self.hi is not None)
            raise ConfigError(f"{where}: must be {'finite and ' if finite else ''}{self}, got {value!r}")


def above(lo: float, note: str = "") -> Range:
    """``> lo``"""
    return Range(lo=lo, lo_open=True, note=note)


def at_least(lo: float, note: str = "") -> Range:
    """``>= lo``"""
    return Range(lo=lo, note=note)


def within(lo: float, hi: float, brackets: str = "[]", note: str = "") -> Range:
    """``lo .. hi`` with ``brackets`` one of ``[]``, ``[)``, ``(]``, ``()``."""
    return Range(lo=lo, hi=hi, lo_open=brackets[0] == "(", hi_open=brackets[1] == ")", note=note)


ANY = Range()
"""any finite number"""
GT0 = above(0)
GE0 = at_least(0)


def ranges_of(cls: type) -> dict[str, Range]:
    """The declared ranges of ``cls``'s numeric fields: its own ``RANGES`` over those of its bases."""
    out: dict[str, Range] = {}
    for c in reversed(cls.__mro__):
        out.update(vars(c).get("RANGES", {}))
    return out


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def check_ranges(obj: Any, section: str | None = None) -> None:
    """Check every field of dataclass ``obj`` that has a declared range (``None`` values: not set, skipped)."""
    section = getattr(type(obj), "SECTION", "") if section is None else section
    for name, rng in ranges_of(type(obj)).items():
        rng.check(_join(section, name), getattr(obj, name))


# ----------------------------------------------------------------------------------------------------------
# Strict dataclass construction
# ----------------------------------------------------------------------------------------------------------
def _check_type(value: Any, tp: Any, where: str, rng: Range | None = None) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _check_type(value, a, where, rng)
            except ConfigError as e:
                errors.append(str(e))
        if errors and type(None) in args:
            raise ConfigError(f"{errors[0]}; or null")
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item_tp,) = typing.get_args(tp) or (Any,)
        return [_check_type(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        item_tp = args[0] if args else Any
        return tuple(_check_type(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        key_tp, value_tp = typing.get_args(tp) or (Any, Any)
        out = {}
        for k, v in value.items():
            out[_check_type(k, key_tp, f"{where} (key {k!r})")] = _check_type(v, value_tp, f"{where}.{k}")
        return out
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            hint = f"; write {int(value)}" if isinstance(value, float) and value.is_integer() else ""
            raise ConfigError(f"{where}: expected an integer, got {value!r}{hint}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            hint = ""
            if isinstance(value, str):
                try:
                    float(value)
                    hint = "; write the number without quotes"
                except ValueError:
                    pass
            raise ConfigError(f"{where}: expected a number, got {value!r}{hint}")
        value = float(value)
        if not math.isfinite(value) and not (rng is not None and rng.infinite and not math.isnan(value)):
            valid = f" {rng}" if rng is not None and rng is not ANY and str(rng) != "a finite number" else ""
            raise ConfigError(f"{where}: must be a finite number{valid}, got {value!r}")
        return value
    if tp is str:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a string, got {str(value).lower()} ({_YAML_BOOL_HINT})")
        if not isinstance(value, str):
            hint = "; YAML read the unquoted value as a number: quote it" if isinstance(value, (int, float)) else ""
            raise ConfigError(f"{where}: expected a string, got {value!r}{hint}")
        return value
    return value


_KEY_FIRST = re.compile(r"^[A-Za-z_][\w\-]*(?:\.[\w\-]+|\[\d+\])*(?: \(key [^)]*\))?: ")


def qualify(message: str, where: str, section: str = "") -> str:
    """``message`` (``"<key>: ..."``, the key relative to ``section``) with its key under ``where``, once."""
    if not where or message.startswith((f"{where}.", f"{where}:", f"{where}[", f"{where} ")) \
            or message.startswith("unknown key '"):
        return message
    if section and message.startswith((f"{section}.", f"{section}:")):
        return where + message[len(section):]
    if _KEY_FIRST.match(message):
        return f"{where}.{message}"
    return f"{where}: {message}"


def from_dict(cls: type, data: Any, where: str = ""):
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys, wrong types and bad values by their full key
    path (``where`` is the path of ``data``)."""
    if isinstance(data, cls):
        return data
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping, got {data!r}")
    for k in data:
        if not isinstance(k, str):
            hint = f" ({_YAML_BOOL_HINT})" if isinstance(k, bool) else ""
            raise ConfigError(f"{where or cls.__name__}: keys must be strings, got {k!r}{hint}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        key = _join(where, unknown[0])
        raise ConfigError(f"unknown key '{key}'; valid keys here: {', '.join(sorted(fields))}")
    ranges = ranges_of(cls)
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _check_type(value, hints[name], _join(where, name), ranges.get(name))
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(qualify(str(e), where, getattr(cls, "SECTION", ""))) from None


def choice(where: str, value: Any, valid: typing.Iterable[Any]) -> None:
    """Raise a ConfigError unless ``value`` is one of ``valid``."""
    valid = list(valid)
    if value not in valid:
        raise ConfigError(f"{where}: invalid value {value!r}; valid values: {', '.join(map(str, valid))}")


def positive(where: str, value: float, allow_zero: bool = False) -> None:
    (GE0 if allow_zero else GT0).check(where, value)


def nonempty_str(where: str, value: str, what: str = "") -> None:
    if not value.strip():
        raise ConfigError(f"{where}: must be a non-empty string{f' ({what})' if what else ''}, got {value!r}")


def names_list(where: str, values: list, valid: typing.Iterable[str] | None = None, what: str = "value") -> None:
    """A non-empty list of distinct names (each one of ``valid`` when given)."""
    valid = list(valid) if valid is not None else None
    if not values:
        raise ConfigError(f"{where}: must not be empty" + (f"; valid values: {', '.join(valid)}" if valid else ""))
    seen = set()
    for i, v in enumerate(values):
        if valid is not None:
            choice(where, v, valid)
        else:
            nonempty_str(f"{where}[{i}]", v)
        if v in seen:
            raise ConfigError(f"{where}: {what} {v!r} is listed twice; list each once")
        seen.add(v)


def revisions_map(where: str, revisions: dict, valid: typing.Iterable[str], what: str) -> None:
    valid = list(valid)
    for k, v in revisions.items():
        if k not in valid:
            raise ConfigError(f"{where}.{k}: unknown {what} '{k}'; valid: {', '.join(valid)}")
        nonempty_str(f"{where}.{k}", v, "a commit, tag or branch")


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def config_hash(cfg: Any) -> str:
    """A short stable hash of a config (used to refuse resuming a checkpoint made with other settings)."""
    blob = json.dumps(to_dict(cfg) if dataclasses.is_dataclass(cfg) else cfg, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------------------
# Profile sections
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DataConfig:
    task: str = "arithmetic"
    """training task: `arithmetic` (synthetic, offline), or `math` (real problems from `sources`, RL only)"""
    digits: int = 3
    """operand digits of the synthetic task (a, b uniform in [10^(d-1), 10^d - 1])"""
    ops: list[str] = field(default_factory=lambda: ["+"])
    """operators of the synthetic task (`+`, `-`, `*`)"""
    scratchpad_frac: float = 0.5
    """fraction of SFT targets that show a column-by-column scratchpad before the boxed answer"""
    n_sft: int = 20000
    """SFT examples"""
    n_rl: int = 4000
    """RL training prompts (task `math`: at most, 0 = all)"""
    n_eval: int = 200
    """held-out prompts (disjoint operand pairs from both training sets; task `math`: problems not in `rl`)"""
    seed: int = 1234
    """seed of the task generator (task `math`: of the shuffle before the splits)"""
    sources: list[str] = field(default_factory=lambda: ["math_l3_5"])
    """training sets of task `math` (`math_l3_5`, `gsm8k`, `dapo17k`; see entropy_rl.data.TRAIN_SOURCES)"""
    source: str = "hub"
    """where task `math` reads them: `hub`, or a directory with `math/`, `gsm8k/`, `dapo_math_17k/train.jsonl`"""
    revisions: dict[str, str] = field(default_factory=dict)
    """hub revision (commit, tag or branch) per training source read from the hub, e.g. `{gsm8k: e53f048}`; a
    source not named here reads the hub's default branch"""

    SECTION = "data"
    RANGES = {"digits": within(1, 6), "scratchpad_frac": within(0, 1), "n_sft": at_least(1), "n_rl": GE0,
              "n_eval": at_least(1), "seed": GE0}

    def __post_init__(self):
        check_ranges(self)
        choice("data.task", self.task, TASKS)
        names_list("data.ops", self.ops, ["+", "-", "*"], "operator")
        if self.task != "math" and self.n_rl < 1:  # task math: 0 = all
            raise ConfigError(f"data.n_rl: must be > 0 for task {self.task} (0 = all is for task math), got {self.n_rl}")
        if not self.sources:
            raise ConfigError(f"data.sources: empty; valid values: {', '.join(TRAIN_SOURCES)}")
        names_list("data.sources", self.sources, TRAIN_SOURCES, "source")
        nonempty_str("data.source", self.source, "`hub` or a directory")
        revisions_map("data.revisions", self.revisions, TRAIN_SOURCES, "training source")


@dataclass(frozen=True)
class LoraConfig:
    r: int = 16
    """LoRA rank"""
    alpha: int = 32
    """LoRA alpha (scale = alpha / r)"""
    dropout: float = 0.0
    """LoRA dropout"""
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    """module names that get adapters (all linear layers of a Llama block)"""

    SECTION = "model.lora"
    RANGES = {"r": at_least(1), "alpha": GT0, "dropout": within(0, 1, "[)")}

    def __post_init__(self):
        check_ranges(self)
        names_list("model.lora.target_modules", self.target_modules, what="module")


@dataclass(frozen=True)
class ModelConfig:
    source: str = "tiny"
    """`tiny` builds a Llama from scratch with a character tokenizer; anything else is a hub id or local path"""
    revision: str = ""
    """hub revision (commit, tag or branch) of `source` when it is a hub id (empty: the default branch)"""
    hidden_size: int = 128
    """tiny model: hidden size"""
    num_layers: int = 4
    """tiny model: decoder layers"""
    num_heads: int = 4
    """tiny model: attention heads"""
    intermediate_size: int = 384
    """tiny model: MLP width"""
    max_position: int = 128
    """tiny model: maximum sequence length"""
    load_in_4bit: bool = False
    """load the frozen base in 4-bit nf4 with double quantization (bitsandbytes); off on the CPU by default"""
    compute_dtype: str = "float32"
    """dtype of the base model's compute (`float32`, `bfloat16`, `float16`)"""
    lora: LoraConfig = field(default_factory=LoraConfig)
    """LoRA adapter used by RL"""
    num_threads: int = 2
    """torch CPU threads (fixed so that runs are bit-reproducible on a given machine)"""
    gradient_checkpointing: bool = False
    """recompute each decoder layer's activations in the backward pass (less memory, ~30 % more time)"""

    SECTION = "model"
    RANGES = {"hidden_size": at_least(1), "num_layers": at_least(1), "num_heads": at_least(1),
              "intermediate_size": at_least(1), "max_position": at_least(1), "num_threads": at_least(1)}

    def __post_init__(self):
        check_ranges(self)
        nonempty_str("model.source", self.source, "`tiny`, a hub id or a local directory")
        choice("model.compute_dtype", self.compute_dtype, ["float32", "bfloat16", "float16"])
        if self.hidden_size % self.num_heads:
            raise ConfigError(f"model.hidden_size: must be divisible by model.num_heads ({self.num_heads}), "
                              f"got {self.hidden_size}")


@dataclass(frozen=True)
class SFTConfig:
    steps: int = 400
    """optimizer steps of the warm start (0: none, the pretrained `model.source` is the starting policy)"""
    batch_size: int = 128
    """sequences per step"""
    lr: float = 3e-3
    """AdamW peak learning rate"""
    warmup: int = 50
    """linear warm-up steps, then cosine decay to 10 %"""
    weight_decay: float = 0.0
    """AdamW weight decay"""
    seed: int = 0
    """seed of initialisation and batch order"""

    SECTION = "sft"
    RANGES = {"steps": GE0, "batch_size": at_least(1), "lr": within(0, 1, "(]"), "warmup": GE0,
              "weight_decay": GE0, "seed": GE0}

    def __post_init__(self):
        check_ranges(self)


HF_LOOPS = ["lean", "generate"]
OLD_STATS = ["auto", "sampler", "recompute"]


@dataclass(frozen=True)
class RolloutConfig:
    backend: str = "hf"
    """rollout backend (`hf`: Hugging Face `generate` on the policy itself; `vllm`: a colocated vLLM engine with
    adapter-only sync; entropy_rl.rollout)"""
    tis: str = "auto"
    """train/inference mismatch correction, truncated importance sampling on the rollout log-probs: `on`, `off`, or
    `auto` (on when the backend reports rollout log-probs, i.e. with vllm)"""
    tis_cap: float = 2.0
    """C of truncated importance sampling: per-token weight min(pi_old / pi_rollout, C) (Yao et al. 2025: 2)"""
    gpu_memory_utilization: float = 0.3
    """vllm: the fraction of the GPU the engine may take (weights + KV cache); the trainer gets the rest"""
    sleep_mode: bool = True
    """vllm: sleep between rollouts (weights to CPU memory, KV cache freed) so that training gets the memory"""
    enforce_eager: bool = False
    """vllm: no CUDA graphs (less memory and start-up time, slower decoding)"""
    max_model_len: int = 0
    """vllm: longest prompt + response the engine plans for (0 = the model's own limit)"""
    max_num_seqs: int = 0
    """vllm: sequences decoded at once (0 = vLLM's default)"""
    hf_loop: str = "lean"
    """hf: the sampling loop: `lean` (entropy_rl.rollout.sampling: the tokens `generate` samples, from a preallocated
    KV cache with finished rows dropped, plus the sampling policy's log-probs and entropies) or `generate` (Hugging
    Face `generate` itself)"""

    SECTION = "rl.rollout"
    RANGES = {"tis_cap": at_least(1, "a weight cap"), "gpu_memory_utilization": within(0, 1, "()"),
              "max_model_len": GE0, "max_num_seqs": GE0}

    def __post_init__(self):
        check_ranges(self)
        choice("rl.rollout.backend", self.backend, BACKENDS)
        choice("rl.rollout.tis", self.tis, ["auto", "on", "off"])
        choice("rl.rollout.hf_loop", self.hf_loop, HF_LOOPS)


@dataclass(frozen=True)
class RLConfig:
    steps: int = 100
    """rollout steps (each: sample, score, then `minibatches` optimizer updates)"""
    prompts_per_step: int = 16
    """prompts per rollout batch"""
    group_size: int = 8
    """G: samples per prompt"""
    temperature: float = 1.0
    """sampling temperature; log-probs and entropies are computed at this temperature too"""
    max_new_tokens: int = 48
    """response length cap (L_max)"""
    minibatches: int = 4
    """optimizer updates per rollout batch (more than one makes the ratio move away from 1)"""
    micro_batches: int = 1
    """gradient accumulation: forward/backward passes per optimizer update (splits each mini-batch; the
    accumulated gradient equals the mini-batch's; `stat_scope: microbatch` objectives take statistics per pass)"""
    epochs: int = 1
    """passes over each rollout batch"""
    lr: float = 3e-4
    """AdamW learning rate for the LoRA parameters"""
    grad_clip: float = 1.0
    """max gradient norm"""
    eval_every: int = 10
    """held-out pass@1 (sampled) every this many steps (and at the end)"""
    eval_prompts: int = 100
    """held-out prompts used for the in-training curve"""
    checkpoint_every: int = 10
    """atomic checkpoint every this many steps (a killed run resumes from it)"""
    forward_batch_size: int = 256
    """responses per no-grad forward pass (old and reference log-probs, held-out entropies): sets memory, not results
    (up to float rounding)"""
    template: str = "plain"
    """prompt template of the RL prompts and the in-training curve (`plain`: the problem as is, the synthetic task;
    `qwen_math`, `boxed`: see entropy_rl.prompts.TEMPLATES)"""
    optimizer: str = "adamw"
    """`adamw` (torch) or `paged_adamw_8bit` (bitsandbytes: 8-bit states in paged memory; needs a GPU)"""
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    """the rollout backend and its settings"""
    nonfinite: str = "stop"
    """a non-finite loss or gradient norm in an update: `stop` (raise, naming the quantity and step; nothing of that
    update is applied and the last checkpoint is kept) or `skip` (drop that update, as verl does, and count it in
    `stats/skipped_updates`); a non-finite controller value or logged metric always stops"""
    reward: str = "verifier"
    """`verifier` (the task's verifiable reward) or `random`: a seeded coin flip per response, independent of it (the
    random-reward probe: advantages are pure noise, so whatever an objective does to entropy is its own bias); the
    verifier still scores the responses, logged as `reward/verifier_mean`"""
    random_reward_p: float = 0.5
    """`reward: random`: the probability of reward 1"""
    old_stats: str = "auto"
    """where pi_old's token log-probs and entropies come from: `recompute` (a no-grad pass of the policy over the
    rollouts, as verl and TRL do), `sampler` (the sampling pass's own, from a sampler that is the trained module: the
    hf backend's lean loop), or `auto` (the sampler's when it reports them and the policy computes in float32, where
    they equal the recomputed ones to float rounding; else recompute)"""

    SECTION = "rl"
    RANGES = {**{k: at_least(1) for k in ("steps", "prompts_per_step", "max_new_tokens", "minibatches",
                                          "micro_batches", "epochs", "eval_every", "eval_prompts",
                                          "checkpoint_every", "forward_batch_size")},
              "group_size": at_least(2, "group-normalized advantages need at least 2 samples per prompt"),
              "temperature": within(*TEMPERATURE_RANGE), "lr": within(0, 1, "(]"), "grad_clip": GT0,
              "random_reward_p": within(0, 1, note="a probability")}

    def __post_init__(self):
        check_ranges(self)
        choice("rl.optimizer", self.optimizer, OPTIMIZERS)
        choice("rl.nonfinite", self.nonfinite, ["stop", "skip"])
        choice("rl.old_stats", self.old_stats, OLD_STATS)
        choice("rl.reward", self.reward, ["verifier", "random"])
        choice("rl.template", self.template, TEMPLATES)
        batch = self.prompts_per_step * self.group_size
        if batch % self.minibatches:
            raise ConfigError(f"rl.minibatches: must divide rl.prompts_per_step * rl.group_size = {batch}, "
                              f"got {self.minibatches}")
        if (batch // self.minibatches) % self.micro_batches:
            raise ConfigError(f"rl.micro_batches: must divide the mini-batch size "
                              f"{batch // self.minibatches} (prompts_per_step * group_size / minibatches), "
                              f"got {self.micro_batches}")


@dataclass(frozen=True)
class EvalConfig:
    n_samples: int = 8
    """samples per held-out prompt (n of pass@k; k runs over 1..n)"""
    temperature: float = 1.0
    """sampling temperature of evaluation"""
    max_new_tokens: int = 48
    """response length cap at evaluation"""
    batch_size: int = 256
    """sequences generated at once"""
    seed: int = 0
    """sampling seed"""
    benchmarks: list[str] = field(default_factory=list)
    """math benchmarks to evaluate (`gsm8k`, `math500`, `aime24`, `aime25`, `amc23`, `minerva`, `olympiadbench`);
    empty = the profile's own held-out split (`<data_dir>/eval.jsonl`)"""
    data_source: str = "data"
    """where the benchmarks are read: a directory in the layout of `data/` (pinned by data.dvc), or `hub`"""
    revisions: dict[str, str] = field(default_factory=dict)
    """with `data_source: hub`, the hub revision per benchmark, e.g. `{math500: ff5b202}` (others: default branch)"""
    limit: int = 0
    """first N problems of each benchmark (0 = all)"""
    template: str = "boxed"
    """prompt template of the benchmarks (`boxed`, `qwen_math`, `plain`; see entropy_rl.prompts)"""
    backend: str = "hf"
    """sampling backend (`hf`, `vllm`: entropy_rl.rollout.BACKENDS, the same registry as rl.rollout.backend)"""
    verify_timeout: float = 10.0
    """seconds math-verify may spend on one response (in a worker process) before it counts as incorrect"""
    verify_workers: int = 0
    """math-verify worker processes (0 = one per core)"""

    SECTION = "eval"
    RANGES = {"n_samples": at_least(1), "temperature": within(*TEMPERATURE_RANGE), "max_new_tokens": at_least(1),
              "batch_size": at_least(1), "seed": GE0, "limit": GE0, "verify_timeout": GT0, "verify_workers": GE0}

    def __post_init__(self):
        check_ranges(self)
        if self.benchmarks:
            names_list("eval.benchmarks", self.benchmarks, EVAL_SETS, "benchmark")
        nonempty_str("eval.data_source", self.data_source, "`hub` or a directory in the layout of data/")
        revisions_map("eval.revisions", self.revisions, EVAL_SETS, "benchmark")
        choice("eval.template", self.template, TEMPLATES)
        choice("eval.backend", self.backend, BACKENDS)


@dataclass(frozen=True)
class Profile:
    name: str
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    rl: RLConfig = field(default_factory=RLConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    description: str = ""
    """one line shown in the README's profile table"""


def validate_profile(profile: Profile, where: str = "") -> Profile:
    """Checks across the sections of a loaded profile (:func:`load_profile` runs them; a ``Profile`` built in code
    from some sections only, as tests do, is not held to them). The message names both keys."""
    d, rl, at = profile.data, profile.rl, (lambda key: _join(where, key))
    if (d.task == "arithmetic" or d.n_rl > 0) and rl.prompts_per_step > d.n_rl:
        raise ConfigError(f"{at('rl.prompts_per_step')}: must be <= {at('data.n_rl')} ({d.n_rl} training prompts), "
                          f"got {rl.prompts_per_step}; lower rl.prompts_per_step or raise data.n_rl")
    if rl.eval_prompts > d.n_eval:
        raise ConfigError(f"{at('rl.eval_prompts')}: must be <= {at('data.n_eval')} ({d.n_eval} held-out prompts), "
                          f"got {rl.eval_prompts}; lower rl.eval_prompts or raise data.n_eval")
    return profile


_PROFILE_KEYS = {*SECTIONS, "description", "extends"}
_TOP_LEVEL = ("profiles", "more_profiles", "objectives", "rl_runs", "study", "probe")


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_params(path: str | Path = "params.yaml") -> dict:
    """The parsed params file, its top level checked (the one reader of params.yaml: :func:`load_yaml`)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: params file not found")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot be read: {_one_line(e)}") from None
    params = load_yaml(text, str(path))
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise ConfigError(f"{path}: the top level must be a mapping with keys {', '.join(_TOP_LEVEL)}, got "
                          f"{type(params).__name__} {params!r:.60}")
    for k in params:
        if not isinstance(k, str):
            raise ConfigError(f"{path}: top-level keys must be strings, got {k!r}")
    unknown = sorted(set(params) - set(_TOP_LEVEL))
    if unknown:
        raise ConfigError(f"unknown top-level key '{unknown[0]}'; valid keys: {', '.join(sorted(_TOP_LEVEL))}")
    for key in ("profiles", "more_profiles", "objectives"):
        entries = params.get(key)
        if entries is None:
            continue
        if not isinstance(entries, dict):
            raise ConfigError(f"{key}: expected a mapping of names to entries, got {entries!r:.80}")
        for name in entries:
            if not isinstance(name, str):
                raise ConfigError(f"{key}: names must be strings, got {name!r}")
    both = sorted(set(params.get("profiles") or {}) & set(params.get("more_profiles") or {}))
    if both:
        raise ConfigError(f"more_profiles.{both[0]}: also defined under `profiles`; a profile name must be unique")
    return params


def profile_key(params: dict, name: str) -> str:
    """The key path of profile ``name``: ``profiles.<name>`` or ``more_profiles.<name>``."""
    return f"more_profiles.{name}" if name in (params.get("more_profiles") or {}) else f"profiles.{name}"


def no_profiles_error(path: Any) -> ConfigError:
    """The error for a params file without profiles (empty, or only objectives)."""
    return ConfigError(f"profiles: {path} defines no profiles; add `profiles:` with at least one, e.g. "
                       f"`tiny: {{data: {{}}, model: {{}}, sft: {{}}, rl: {{}}, eval: {{}}}}` (a profile without "
                       f"`extends` states each of {', '.join(SECTIONS)}; `{{}}` = the defaults)")


def _mapping_entry(value: Any, where: str, expected: str) -> dict:
    """A copy of the params.yaml entry ``value`` at ``where``: a mapping with string keys (empty: ``{}``)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected {expected}, got {value!r:.80}")
    for k in value:
        if not isinstance(k, str):
            hint = f" ({_YAML_BOOL_HINT})" if isinstance(k, bool) else ""
            raise ConfigError(f"{where}: keys must be strings, got {k!r}{hint}")
    return dict(value)


def _raw_profile(params: dict, name: str, seen: tuple[str, ...] = (), path: Any = "params.yaml") -> dict:
    every = {**(params.get("more_profiles") or {}), **(params.get("profiles") or {})}
    if not every:
        raise no_profiles_error(path)
    if name not in every:
        raise ConfigError(f"unknown profile '{name}'; valid profiles: {', '.join(sorted(every))}")
    where = profile_key(params, name)
    if name in seen:
        raise ConfigError(f"{where}.extends: cycle {' -> '.join(seen + (name,))}")
    raw = _mapping_entry(every[name], where, f"a mapping with keys {', '.join(sorted(_PROFILE_KEYS))}")
    unknown = sorted(set(raw) - _PROFILE_KEYS)
    if unknown:
        raise ConfigError(f"unknown key '{where}.{unknown[0]}'; valid keys: {', '.join(sorted(_PROFILE_KEYS))}")
    for s in SECTIONS:
        if s in raw and raw[s] is None:
            raw[s] = {}  # `rl:` with nothing under it: the defaults (in a base) or no change (under `extends`)
    base = raw.pop("extends", None)
    if base is None:
        missing = [s for s in SECTIONS if s not in raw]
        if missing:
            raise ConfigError(f"{where}.{missing[0]}: missing; a profile without `extends` states each of "
                              f"{', '.join(SECTIONS)} (`{missing[0]}: {{}}` = all defaults)")
        return raw
    if not isinstance(base, str):
        raise ConfigError(f"{where}.extends: expected the name of another profile, got {base!r}")
    if base not in every:
        raise ConfigError(f"{where}.extends: unknown profile '{base}'; valid profiles: {', '.join(sorted(every))}")
    return _deep_merge(_raw_profile(params, base, seen + (name,), path), raw)


def _set_dotted(d: dict, dotted: Any, value: Any, where: str = "") -> dict:
    if not isinstance(dotted, str):
        raise ConfigError(f"overrides: keys must be dotted strings such as 'rl.steps', got {dotted!r}")
    keys = dotted.split(".")
    if not all(keys):
        raise ConfigError(f"overrides['{dotted}']: empty part in the dotted key; write e.g. 'rl.steps'")
    out = dict(d)
    cur = out
    for i, k in enumerate(keys[:-1]):
        inner = cur.get(k)
        if inner is not None and not isinstance(inner, dict):
            at = _join(where, ".".join(keys[: i + 1]))
            raise ConfigError(f"overrides['{dotted}']: {at} is not a mapping, got {inner!r:.60}; an override names "
                              "a key under a section, e.g. 'rl.steps'")
        cur[k] = dict(inner or {})
        cur = cur[k]
    cur[keys[-1]] = value
    return out


def check_overrides(overrides: Any, what: str = 'dotted keys to values, e.g. {"rl.steps": 3}') -> dict:
    """``overrides`` as a dict (None: none); anything but a mapping raises."""
    if overrides is None:
        return {}
    if not isinstance(overrides, dict):
        raise ConfigError(f"overrides: expected a mapping of {what}, got {overrides!r:.80}")
    return overrides


def load_profile(path: str | Path = "params.yaml", name: str = "tiny", overrides: dict | None = None) -> Profile:
    """Load profile ``name`` strictly; ``overrides`` maps dotted keys (``"rl.steps"``) to values."""
    params = read_params(path)
    if not isinstance(name, str):
        raise ConfigError(f"profile: expected the name of a profile, got {name!r}")
    raw = _raw_profile(params, name, path=path)
    where = profile_key(params, name)
    for k, v in check_overrides(overrides).items():
        raw = _set_dotted(raw, k, v, where)
    return validate_profile(from_dict(Profile, {**raw, "name": name}, where), where)


def resolve_objective(path: str | Path, objective: str) -> tuple[str, dict]:
    """``(method, settings)`` of ``objectives.<objective>`` in params.yaml.

    An entry holds the settings of a registry objective that differ from its defaults (``grpo: {}`` = the paper's
    defaults), or is a *variant* (an ablation, another precision) that names its registry objective with ``method``
    and states what differs from that objective's defaults: ``paec-no_penalty: {method: paec, penalty: false}``.
    The settings are validated by the method's own config (``objectives.make_objective_config``, which names
    ``objectives.<objective>`` when given ``where``)."""
    objectives = read_params(path).get("objectives") or {}
    if not isinstance(objective, str):
        raise ConfigError(f"objective: expected the name of an entry under `objectives`, got {objective!r}")
    if objective not in objectives:
        raise ConfigError(f"unknown objective '{objective}' in {path}; objectives with settings: "
                          f"{', '.join(sorted(objectives))}")
    entry = _mapping_entry(objectives[objective], f"objectives.{objective}", "a mapping of settings")
    method = entry.pop("method", objective)
    if not isinstance(method, str):
        raise ConfigError(f"objectives.{objective}.method: expected the name of a registry objective, got {method!r}")
    if "extends" in entry:
        raise ConfigError(f"objectives.{objective}.extends: variants name their registry objective with `method:` "
                          "and state what differs from its defaults; to reuse another entry's settings, merge it "
                          "with a YAML anchor (`<<: *name`)")
    other = objectives.get(method) if method != objective else None
    if isinstance(other, dict) and "method" in other:
        raise ConfigError(f"objectives.{objective}.method: '{method}' is itself a variant; name its registry "
                          f"objective ('{other['method']}')")
    return method, entry


def objective_settings(path: str | Path, objective: str) -> dict:
    """The settings of ``objectives.<objective>`` (without ``method``)."""
    return resolve_objective(path, objective)[1]


def _name_list(section: str, key: str, value: Any) -> list:
    if value is None:
        raise ConfigError(f"{section}.{key}: missing; expected a non-empty list")
    if not isinstance(value, list):
        raise ConfigError(f"{section}.{key}: expected a list, got {value!r:.60}")
    if not value:
        raise ConfigError(f"{section}.{key}: must not be empty (the matrix would have no runs)")
    seen = set()
    for i, v in enumerate(value):
        try:
            hash(v)
        except TypeError:
            raise ConfigError(f"{section}.{key}[{i}]: expected a name or a seed, got {v!r:.60}") from None
        if v in seen:
            raise ConfigError(f"{section}.{key}: {v!r} is listed twice (two runs of the same name); list it once")
        seen.add(v)
    return value


def run_matrix(path: str | Path = "params.yaml", section: str = "rl_runs") -> list[tuple[str, str, int]]:
    """The ``(profile, objective, seed)`` runs of ``rl_runs`` (or of ``study`` or ``probe``, whose profile is one),
    validated: active profiles, objectives with an entry under ``objectives``, integer seeds; ``probe.base``: the
    active profile whose data and SFT start the probe reuses."""
    if section not in ("rl_runs", "study", "probe"):
        raise ConfigError(f"{section}: not a run matrix; valid: rl_runs, study, probe")
    params = read_params(path)
    runs = params.get(section)
    if not isinstance(runs, dict):
        raise ConfigError(f"{section}: must be a mapping with objectives and seeds, got {runs!r:.60} (in {path})")
    keys = {"rl_runs": {"profiles", "objectives", "seeds"}, "study": {"profile", "objectives", "seeds"},
            "probe": {"profile", "base", "objectives", "seeds"}}[section]
    for k in runs:
        if not isinstance(k, str):
            raise ConfigError(f"{section}: keys must be strings, got {k!r}")
    unknown = sorted(set(runs) - keys)
    if unknown:
        raise ConfigError(f"unknown key '{section}.{unknown[0]}'; valid keys: {', '.join(sorted(keys))}")
    every = {**(params.get("more_profiles") or {}), **(params.get("profiles") or {})}
    if section == "rl_runs":
        profiles, valid_profiles = _name_list(section, "profiles", runs.get("profiles")), params.get("profiles") or {}
    else:
        profiles, valid_profiles = [runs.get("profile")], every
    for i, p in enumerate(profiles):
        key = f"{section}.profiles[{i}]" if section == "rl_runs" else f"{section}.profile"
        if not isinstance(p, str) or p not in valid_profiles:
            raise ConfigError(f"{key}: profile {p!r} is not "
                              f"{'an active profile (under `profiles`)' if section == 'rl_runs' else 'a profile'}; "
                              f"valid: {', '.join(sorted(valid_profiles))}")
    if section == "probe" and runs.get("base") not in (params.get("profiles") or {}):
        raise ConfigError(f"probe.base: {runs.get('base')!r} is not an active profile (under `profiles`), whose data "
                          f"and SFT start the probe reuses; valid: {', '.join(sorted(params.get('profiles') or {}))}")
    objectives = params.get("objectives") or {}
    names = _name_list(section, "objectives", runs.get("objectives"))
    for i, o in enumerate(names):
        if not isinstance(o, str) or o not in objectives:
            raise ConfigError(f"{section}.objectives[{i}]: {o!r} has no entry under `objectives`; valid: "
                              f"{', '.join(sorted(objectives))}")
    seeds = _name_list(section, "seeds", runs.get("seeds"))
    for i, s in enumerate(seeds):
        if isinstance(s, bool) or not isinstance(s, int) or s < 0:
            raise ConfigError(f"{section}.seeds[{i}]: expected integers >= 0, got {s!r}")
    return [(p, o, s) for p in profiles for o in names for s in seeds]
