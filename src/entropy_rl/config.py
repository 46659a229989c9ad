"""Typed configuration: one frozen dataclass per concern, loaded strictly from ``params.yaml``.

``params.yaml`` has three top-level keys that this module reads:

* ``profiles``: the *active* profiles (``dvc repro`` expands its stages over exactly these);
* ``more_profiles``: profiles that exist but are not run by default (move one into ``profiles`` to run it);
* ``objectives``: one entry per objective name with that objective's settings.

A profile may say ``extends: <other profile>`` and override any subset of its sections.
Every unknown key, wrong type or invalid value raises :class:`ConfigError` naming the key path and what
would be valid, before any work starts.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
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


# ----------------------------------------------------------------------------------------------------------
# Strict dataclass construction
# ----------------------------------------------------------------------------------------------------------
def _check_type(value: Any, tp: Any, where: str) -> Any:
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
                return _check_type(value, a, where)
            except ConfigError as e:
                errors.append(str(e))
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
        return dict(value)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def from_dict(cls: type, data: Any, where: str = ""):
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and wrong types by name."""
    if isinstance(data, cls):
        return data
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        key = f"{where}.{unknown[0]}" if where else unknown[0]
        raise ConfigError(f"unknown key '{key}'; valid keys here: {', '.join(sorted(fields))}")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _check_type(value, hints[name], f"{where}.{name}" if where else name)
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}" if where and not str(e).startswith(where) else str(e)) from None


def choice(where: str, value: Any, valid: typing.Iterable[Any]) -> None:
    """Raise a ConfigError unless ``value`` is one of ``valid``."""
    valid = list(valid)
    if value not in valid:
        raise ConfigError(f"{where}: invalid value {value!r}; valid values: {', '.join(map(str, valid))}")


def positive(where: str, value: float, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{where}: must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")


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

    def __post_init__(self):
        choice("data.task", self.task, TASKS)
        for op in self.ops:
            choice("data.ops", op, ["+", "-", "*"])
        if not 1 <= self.digits <= 6:
            raise ConfigError(f"data.digits: must be in 1..6, got {self.digits}")
        if not 0.0 <= self.scratchpad_frac <= 1.0:
            raise ConfigError(f"data.scratchpad_frac: must be in [0, 1], got {self.scratchpad_frac}")
        for k in ("n_sft", "n_rl", "n_eval"):
            positive(f"data.{k}", getattr(self, k), allow_zero=k == "n_rl" and self.task == "math")
        if not self.sources:
            raise ConfigError(f"data.sources: empty; valid values: {', '.join(TRAIN_SOURCES)}")
        for s in self.sources:
            choice("data.sources", s, TRAIN_SOURCES)


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


@dataclass(frozen=True)
class ModelConfig:
    source: str = "tiny"
    """`tiny` builds a Llama from scratch with a character tokenizer; anything else is a hub id or local path"""
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

    def __post_init__(self):
        choice("model.compute_dtype", self.compute_dtype, ["float32", "bfloat16", "float16"])
        if self.hidden_size % self.num_heads:
            raise ConfigError("model.hidden_size: must be divisible by model.num_heads")
        positive("model.num_threads", self.num_threads)


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

    def __post_init__(self):
        positive("sft.steps", self.steps, allow_zero=True)
        positive("sft.batch_size", self.batch_size)
        positive("sft.lr", self.lr)


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

    def __post_init__(self):
        choice("rl.rollout.backend", self.backend, BACKENDS)
        choice("rl.rollout.tis", self.tis, ["auto", "on", "off"])
        if self.tis_cap < 1:
            raise ConfigError(f"rl.rollout.tis_cap: must be >= 1 (a weight cap), got {self.tis_cap}")
        if not 0 < self.gpu_memory_utilization < 1:
            raise ConfigError(f"rl.rollout.gpu_memory_utilization: must be in (0, 1), got {self.gpu_memory_utilization}")
        positive("rl.rollout.max_model_len", self.max_model_len, allow_zero=True)
        positive("rl.rollout.max_num_seqs", self.max_num_seqs, allow_zero=True)


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

    def __post_init__(self):
        choice("rl.optimizer", self.optimizer, OPTIMIZERS)
        choice("rl.template", self.template, TEMPLATES)
        for k in ("steps", "prompts_per_step", "group_size", "max_new_tokens", "minibatches", "micro_batches",
                  "epochs", "eval_every", "eval_prompts", "checkpoint_every", "forward_batch_size"):
            positive(f"rl.{k}", getattr(self, k))
        positive("rl.temperature", self.temperature)
        positive("rl.lr", self.lr)
        if self.group_size < 2:
            raise ConfigError("rl.group_size: group-normalized advantages need at least 2 samples per prompt")
        if (self.prompts_per_step * self.group_size) % self.minibatches:
            raise ConfigError(
                f"rl.minibatches: {self.minibatches} must divide prompts_per_step*group_size "
                f"= {self.prompts_per_step * self.group_size}"
            )
        if (self.prompts_per_step * self.group_size // self.minibatches) % self.micro_batches:
            raise ConfigError(
                f"rl.micro_batches: {self.micro_batches} must divide the mini-batch size "
                f"{self.prompts_per_step * self.group_size // self.minibatches}"
            )


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

    def __post_init__(self):
        positive("eval.n_samples", self.n_samples)
        positive("eval.temperature", self.temperature)
        for b in self.benchmarks:
            choice("eval.benchmarks", b, EVAL_SETS)
        choice("eval.template", self.template, TEMPLATES)
        choice("eval.backend", self.backend, BACKENDS)
        positive("eval.limit", self.limit, allow_zero=True)
        positive("eval.verify_timeout", self.verify_timeout)
        positive("eval.verify_workers", self.verify_workers, allow_zero=True)


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


_SECTIONS = {"data", "model", "sft", "rl", "eval", "description", "extends"}


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_params(path: str | Path = "params.yaml") -> dict:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"params file not found: {path}")
    with open(path) as f:
        params = yaml.safe_load(f) or {}
    if not isinstance(params, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    valid = {"profiles", "more_profiles", "objectives", "rl_runs", "study"}
    unknown = sorted(set(params) - valid)
    if unknown:
        raise ConfigError(f"{path}: unknown top-level key '{unknown[0]}'; valid keys: {', '.join(sorted(valid))}")
    return params


def _raw_profile(params: dict, name: str, seen: tuple[str, ...] = ()) -> dict:
    every = {**(params.get("more_profiles") or {}), **(params.get("profiles") or {})}
    if name not in every:
        raise ConfigError(f"unknown profile '{name}'; valid profiles: {', '.join(sorted(every))}")
    if name in seen:
        raise ConfigError(f"profiles.{name}.extends: cycle {' -> '.join(seen + (name,))}")
    raw = dict(every[name] or {})
    unknown = sorted(set(raw) - _SECTIONS)
    if unknown:
        raise ConfigError(
            f"unknown key 'profiles.{name}.{unknown[0]}'; valid keys: {', '.join(sorted(_SECTIONS))}"
        )
    base = raw.pop("extends", None)
    if base is not None:
        raw = _deep_merge(_raw_profile(params, base, seen + (name,)), raw)
    return raw


def _set_dotted(d: dict, dotted: str, value: Any) -> dict:
    keys = dotted.split(".")
    out = dict(d)
    cur = out
    for k in keys[:-1]:
        cur[k] = dict(cur.get(k) or {})
        cur = cur[k]
    cur[keys[-1]] = value
    return out


def load_profile(path: str | Path = "params.yaml", name: str = "tiny", overrides: dict | None = None) -> Profile:
    """Load profile ``name`` strictly; ``overrides`` maps dotted keys (``"rl.steps"``) to values."""
    raw = _raw_profile(read_params(path), name)
    for k, v in (overrides or {}).items():
        raw = _set_dotted(raw, k, v)
    return from_dict(Profile, {**raw, "name": name}, f"profiles.{name}")


def resolve_objective(path: str | Path, objective: str) -> tuple[str, dict]:
    """``(method, settings)`` of ``objectives.<objective>`` in params.yaml.

    An entry holds the settings of a registry objective that differ from its defaults (``grpo: {}`` = the paper's
    defaults), or is a *variant* (an ablation, another precision) that names its registry objective with ``method``
    and states what differs from that objective's defaults: ``paec-no_penalty: {method: paec, penalty: false}``.
    The settings are validated by the method's own config (``objectives.make_objective_config``)."""
    objectives = read_params(path).get("objectives") or {}
    if objective not in objectives:
        raise ConfigError(f"unknown objective '{objective}' in {path}; objectives with settings: "
                          f"{', '.join(sorted(objectives))}")
    entry = objectives[objective]
    if entry is None:
        entry = {}
    if not isinstance(entry, dict):
        raise ConfigError(f"objectives.{objective}: expected a mapping of settings, got {entry!r}")
    entry = dict(entry)
    method = entry.pop("method", objective)
    if not isinstance(method, str):
        raise ConfigError(f"objectives.{objective}.method: expected the name of a registry objective, got {method!r}")
    if "extends" in entry:
        raise ConfigError(f"objectives.{objective}.extends: variants name their registry objective with `method:` "
                          "and state what differs from its defaults; to reuse another entry's settings, merge it "
                          "with a YAML anchor (`<<: *name`)")
    if method != objective and method in objectives and objectives[method] and "method" in (objectives[method] or {}):
        raise ConfigError(f"objectives.{objective}.method: '{method}' is itself a variant; name its registry "
                          f"objective ('{objectives[method]['method']}')")
    return method, entry


def objective_settings(path: str | Path, objective: str) -> dict:
    """The settings of ``objectives.<objective>`` (without ``method``)."""
    return resolve_objective(path, objective)[1]


def run_matrix(path: str | Path = "params.yaml", section: str = "rl_runs") -> list[tuple[str, str, int]]:
    """The ``(profile, objective, seed)`` runs of ``rl_runs`` (or of ``study``, whose profile is one), validated:
    active profiles, objectives with an entry under ``objectives``, integer seeds."""
    params = read_params(path)
    runs = params.get(section)
    if not isinstance(runs, dict):
        raise ConfigError(f"{path}: `{section}` must be a mapping with objectives and seeds")
    keys = {"rl_runs": {"profiles", "objectives", "seeds"}, "study": {"profile", "objectives", "seeds"}}[section]
    unknown = sorted(set(runs) - keys)
    if unknown:
        raise ConfigError(f"unknown key '{section}.{unknown[0]}'; valid keys: {', '.join(sorted(keys))}")
    profiles = runs.get("profiles") if section == "rl_runs" else [runs.get("profile")]
    every = {**(params.get("more_profiles") or {}), **(params.get("profiles") or {})}
    valid_profiles = params.get("profiles") or {} if section == "rl_runs" else every
    for p in profiles or []:
        if p not in valid_profiles:
            raise ConfigError(f"{section}: profile '{p}' is not {'an active profile' if section == 'rl_runs' else 'a profile'}; "
                              f"valid: {', '.join(sorted(valid_profiles))}")
    objectives = params.get("objectives") or {}
    for o in runs.get("objectives") or []:
        if o not in objectives:
            raise ConfigError(f"{section}.objectives: '{o}' has no entry under `objectives`; valid: "
                              f"{', '.join(sorted(objectives))}")
    seeds = runs.get("seeds") or []
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, int) or s < 0:
            raise ConfigError(f"{section}.seeds: expected integers >= 0, got {s!r}")
    return [(p, o, s) for p in profiles or [] for o in runs.get("objectives") or [] for s in seeds]
