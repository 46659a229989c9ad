"""Strict validation of params.yaml (issue 14, part 2): mutations of the real file, each refused with a one-line
:class:`ConfigError` whose message names the full key path, and valid mutations that must still load."""
import copy
import dataclasses
import math
import subprocess
import sys
import typing

import pytest
import yaml

from entropy_rl import config, preflight
from entropy_rl.config import ConfigError, load_profile, ranges_of, read_params
from entropy_rl.objectives import SPECS, load_objective

from conftest import ROOT

PARAMS_FILE = ROOT / "params.yaml"
TEXT = PARAMS_FILE.read_text()
PARAMS = read_params(PARAMS_FILE)
NAN, INF = float("nan"), float("inf")
DELETE = object()

T, C, S = "profiles/tiny", "more_profiles/consumer-gpu", "more_profiles/consumer-gpu-0.5b"
O = "objectives"


# ---------------------------------------------------------------------------------------------- mutations
def put(path, value):
    """Set (or, with DELETE, remove) the key at ``path`` (``/``-separated: profile names hold dots)."""
    def apply(params):
        *parents, last = path.split("/")
        cur = params
        for k in parents:
            cur = cur.setdefault(k, {})
        if value is DELETE:
            del cur[last]
        else:
            cur[last] = copy.deepcopy(value)
    return apply


def text(old, new):
    """Replace ``old`` (which must occur once) in the raw text of params.yaml."""
    assert TEXT.count(old) == 1, old
    return ("text", old, new)


def write_mutated(tmp_path, mutations):
    mutations = mutations if isinstance(mutations, list) else [mutations]
    if any(isinstance(m, tuple) for m in mutations):
        body = TEXT
        for _, old, new in mutations:
            body = body.replace(old, new)
    else:
        params = copy.deepcopy(PARAMS)
        for m in mutations:
            m(params)
        body = yaml.safe_dump(params, sort_keys=False)
    p = tmp_path / "params.yaml"
    p.write_text(body)
    return p


def check(**kw):
    return lambda p: preflight.check(p, **kw)


def profile(name, overrides):
    return lambda p: load_profile(p, name, overrides)


def objective(name, overrides=None):
    return lambda p: load_objective(name, p, overrides)


def case(mutation, key, *extra, call=None, id=None):
    return pytest.param(mutation, key, extra, call or check(), id=id or key)


BAD = [
    # -------------------------------------------------------------- non-finite floats (YAML .nan / .inf)
    case(put(f"{T}/rl/lr", NAN), "profiles.tiny.rl.lr", "finite", id="rl.lr-nan"),
    case(put(f"{T}/rl/lr", INF), "profiles.tiny.rl.lr", "finite", id="rl.lr-inf"),
    case(put(f"{T}/rl/temperature", NAN), "profiles.tiny.rl.temperature", id="rl.temperature-nan"),
    case(put(f"{T}/rl/grad_clip", INF), "profiles.tiny.rl.grad_clip", id="rl.grad_clip-inf"),
    case(put(f"{T}/sft/lr", NAN), "profiles.tiny.sft.lr", id="sft.lr-nan"),
    case(put(f"{T}/sft/weight_decay", NAN), "profiles.tiny.sft.weight_decay", id="sft.weight_decay-nan"),
    case(put(f"{T}/data/scratchpad_frac", NAN), "profiles.tiny.data.scratchpad_frac", id="scratchpad-nan"),
    case(put(f"{T}/eval/temperature", -INF), "profiles.tiny.eval.temperature", id="eval.temperature--inf"),
    case(put(f"{T}/eval/verify_timeout", INF), "profiles.tiny.eval.verify_timeout", id="verify_timeout-inf"),
    case(put(f"{T}/rl/rollout/tis_cap", INF), "profiles.tiny.rl.rollout.tis_cap", "finite", id="tis_cap-inf"),
    case(put(f"{C}/rl/rollout/gpu_memory_utilization", NAN),
         "more_profiles.consumer-gpu.rl.rollout.gpu_memory_utilization", id="gpu_mem-nan"),
    case(put(f"{T}/model/lora/dropout", NAN), "profiles.tiny.model.lora.dropout", id="lora.dropout-nan"),
    case(put(f"{O}/entropy_bonus/coef_max", NAN), "objectives.entropy_bonus.coef_max", id="coef_max-nan"),
    case(put(f"{O}/grpo/kl_coef", INF), "objectives.grpo.kl_coef", id="kl_coef-inf"),
    case(put(f"{O}/paec-no_penalty/coef", NAN), "objectives.paec-no_penalty.coef", id="variant-coef-nan"),
    case(put(f"{O}/kl_cov/k", NAN), "objectives.kl_cov.k", id="kl_cov.k-nan"),
    case(put(f"{O}/repo/zeta", INF), "objectives.repo.zeta", id="repo.zeta-inf"),
    case(put(f"{O}/clip_cov/cov_ub", INF), "objectives.clip_cov.cov_ub", id="cov_ub-inf"),
    case(put(f"{O}/erpo/gamma", NAN), "objectives.erpo.gamma", id="erpo.gamma-nan"),
    case(put(f"{O}/dapo/overlong_penalty", INF), "objectives.dapo.overlong_penalty", id="overlong_penalty-inf"),
    case(put(f"{O}/adapo/target_entropy", INF), "objectives.adapo.target_entropy", id="target_entropy-inf"),
    case(put(f"{O}/grpo/clip_ratio_c", NAN), "objectives.grpo.clip_ratio_c", id="clip_ratio_c-nan"),
    case(text("      lr: 3.0e-4", "      lr: .nan"), "profiles.tiny.rl.lr", id="yaml-.nan"),
    case(text("tis_cap: 2.0", "tis_cap: .inf"), "more_profiles.consumer-gpu.rl.rollout.tis_cap", id="yaml-.inf"),
    # -------------------------------------------------------------- temperatures: [0.01, 10]
    case(put(f"{T}/rl/temperature", 1e-40), "profiles.tiny.rl.temperature", "[0.01, 10]", id="rl.temperature-1e-40"),
    case(put(f"{T}/eval/temperature", 1e-40), "profiles.tiny.eval.temperature", "[0.01, 10]", id="eval.temperature-1e-40"),
    case(put(f"{T}/rl/temperature", 0.0), "profiles.tiny.rl.temperature", id="rl.temperature-0"),
    case(put(f"{T}/rl/temperature", 100.0), "profiles.tiny.rl.temperature", id="rl.temperature-100"),
    case(put(f"{C}/eval/temperature", 0.001), "more_profiles.consumer-gpu.eval.temperature", id="gpu-eval.temperature"),
    case(text("      temperature: 0.6", "      temperature: 1e-40"), "more_profiles.consumer-gpu.eval.temperature",
         "got 1e-40", id="yaml-1e-40-is-a-number"),
    # -------------------------------------------------------------- grad_clip > 0
    case(put(f"{T}/rl/grad_clip", -1), "profiles.tiny.rl.grad_clip: must be > 0, got -1.0", id="grad_clip--1"),
    case(put(f"{T}/rl/grad_clip", 0), "profiles.tiny.rl.grad_clip", id="grad_clip-0"),
    # -------------------------------------------------------------- model sizes, LoRA
    case(put(f"{T}/model/hidden_size", 0), "profiles.tiny.model.hidden_size", id="hidden_size-0"),
    case(put(f"{T}/model/num_layers", 0), "profiles.tiny.model.num_layers", id="num_layers-0"),
    case(put(f"{T}/model/num_heads", 0), "profiles.tiny.model.num_heads", id="num_heads-0"),
    case(put(f"{T}/model/num_heads", -2), "profiles.tiny.model.num_heads", id="num_heads--2"),
    case(put(f"{T}/model/intermediate_size", -1), "profiles.tiny.model.intermediate_size", id="intermediate-neg"),
    case(put(f"{T}/model/max_position", 0), "profiles.tiny.model.max_position", id="max_position-0"),
    case(put(f"{T}/model/hidden_size", 130), "profiles.tiny.model.hidden_size", "num_heads", id="hidden-indivisible"),
    case(put(f"{T}/model/num_threads", 0), "profiles.tiny.model.num_threads", id="num_threads-0"),
    case(put(f"{T}/model/lora/r", 0), "profiles.tiny.model.lora.r", id="lora.r-0"),
    case(put(f"{T}/model/lora/alpha", 0), "profiles.tiny.model.lora.alpha", id="lora.alpha-0"),
    case(put(f"{T}/model/lora/alpha", -32), "profiles.tiny.model.lora.alpha", id="lora.alpha-neg"),
    case(put(f"{T}/model/lora/dropout", 1.0), "profiles.tiny.model.lora.dropout", "[0, 1)", id="lora.dropout-1"),
    case(put(f"{T}/model/lora/dropout", -0.1), "profiles.tiny.model.lora.dropout", id="lora.dropout-neg"),
    case(put(f"{C}/model/lora/target_modules", []), "more_profiles.consumer-gpu.model.lora.target_modules",
         id="target_modules-empty"),
    case(put(f"{C}/model/lora/target_modules", ["q_proj", "q_proj"]),
         "more_profiles.consumer-gpu.model.lora.target_modules", "twice", id="target_modules-dup"),
    case(put(f"{T}/model/source", ""), "profiles.tiny.model.source", id="model.source-empty"),
    case(put(f"{T}/model/revision", 1234567), "profiles.tiny.model.revision", "quote", id="model.revision-int"),
    case(put(f"{T}/model/compute_dtype", "fp8"), "profiles.tiny.model.compute_dtype", "float32", id="dtype-fp8"),
    case(put(f"{T}/model/lora", [16]), "profiles.tiny.model.lora", "mapping", id="lora-list"),
    # -------------------------------------------------------------- data
    case(put(f"{T}/data/ops", []), "profiles.tiny.data.ops", "+, -, *", id="ops-empty"),
    case(put(f"{T}/data/ops", ["+", "+"]), "profiles.tiny.data.ops", "twice", id="ops-dup"),
    case(put(f"{T}/data/ops", ["/"]), "profiles.tiny.data.ops", id="ops-divide"),
    case(put(f"{T}/data/ops", "+"), "profiles.tiny.data.ops", "list", id="ops-string"),
    case(put(f"{T}/data/digits", 0), "profiles.tiny.data.digits", id="digits-0"),
    case(put(f"{T}/data/digits", 7), "profiles.tiny.data.digits", "[1, 6]", id="digits-7"),
    case(put(f"{T}/data/n_sft", 0), "profiles.tiny.data.n_sft", id="n_sft-0"),
    case(put(f"{T}/data/n_rl", 0), "profiles.tiny.data.n_rl", id="n_rl-0-arithmetic"),
    case(put(f"{T}/data/n_eval", 0), "profiles.tiny.data.n_eval", id="n_eval-0"),
    case(put(f"{T}/data/seed", -1), "profiles.tiny.data.seed", id="data.seed-neg"),
    case(put(f"{T}/data/scratchpad_frac", 1.5), "profiles.tiny.data.scratchpad_frac", id="scratchpad-1.5"),
    case(put(f"{T}/data/task", "maths"), "profiles.tiny.data.task", "arithmetic, math", id="task-maths"),
    case(put(f"{C}/data/sources", []), "more_profiles.consumer-gpu.data.sources", id="sources-empty"),
    case(put(f"{C}/data/sources", ["gsm8k", "gsm8k"]), "more_profiles.consumer-gpu.data.sources", id="sources-dup"),
    case(put(f"{C}/data/revisions", {"foo": "abc"}), "more_profiles.consumer-gpu.data.revisions.foo", "math_l3_5",
         id="data.revisions-unknown-source"),
    case(put(f"{C}/data/revisions", {"gsm8k": ""}), "more_profiles.consumer-gpu.data.revisions.gsm8k",
         id="data.revisions-empty"),
    case(put(f"{C}/data/revisions", {"gsm8k": 123}), "more_profiles.consumer-gpu.data.revisions.gsm8k", "string",
         id="data.revisions-int"),
    case(put(f"{C}/data/revisions", ["gsm8k"]), "more_profiles.consumer-gpu.data.revisions", "mapping",
         id="data.revisions-list"),
    case(put(f"{C}/data/revisions", {1: "abc"}), "more_profiles.consumer-gpu.data.revisions", id="data.revisions-int-key"),
    case(put(f"{C}/data/source", ""), "more_profiles.consumer-gpu.data.source", id="data.source-empty"),
    # -------------------------------------------------------------- sft
    case(put(f"{T}/sft/warmup", -1), "profiles.tiny.sft.warmup", id="warmup-neg"),
    case(put(f"{T}/sft/weight_decay", -0.1), "profiles.tiny.sft.weight_decay", id="weight_decay-neg"),
    case(put(f"{T}/sft/seed", -1), "profiles.tiny.sft.seed", id="sft.seed-neg"),
    case(put(f"{T}/sft/steps", -1), "profiles.tiny.sft.steps", id="sft.steps-neg"),
    case(put(f"{T}/sft/batch_size", 0), "profiles.tiny.sft.batch_size", id="sft.batch_size-0"),
    case(put(f"{T}/sft/lr", 0), "profiles.tiny.sft.lr", id="sft.lr-0"),
    case(put(f"{T}/sft/lr", 5.0), "profiles.tiny.sft.lr", "(0, 1]", id="sft.lr-5"),
    # -------------------------------------------------------------- rl
    case(put(f"{T}/rl/steps", 0), "profiles.tiny.rl.steps", id="rl.steps-0"),
    case(put(f"{T}/rl/prompts_per_step", 5000), "profiles.tiny.rl.prompts_per_step", "data.n_rl", id="pps>n_rl"),
    case(put(f"{T}/data/n_rl", 8), "profiles.tiny.rl.prompts_per_step", "data.n_rl", id="n_rl<pps"),
    case(put(f"{T}/rl/eval_prompts", 300), "profiles.tiny.rl.eval_prompts", "data.n_eval", id="eval_prompts>n_eval"),
    case(put(f"{C}/rl/eval_prompts", 101), "more_profiles.consumer-gpu.rl.eval_prompts", "data.n_eval",
         id="gpu-eval_prompts>n_eval"),
    case(put(f"{C}/data/n_rl", 8), "more_profiles.consumer-gpu.rl.prompts_per_step", "data.n_rl", id="math-n_rl<pps"),
    case(put(f"{T}/rl/group_size", 1), "profiles.tiny.rl.group_size", ">= 2", id="group_size-1"),
    case(put(f"{T}/rl/minibatches", 3), "profiles.tiny.rl.minibatches", "128", id="minibatches-3"),
    case(put(f"{C}/rl/micro_batches", 3), "more_profiles.consumer-gpu.rl.micro_batches", "64", id="micro_batches-3"),
    case(put(f"{T}/rl/nonfinite", "ignore"), "profiles.tiny.rl.nonfinite", "stop, skip", id="nonfinite-ignore"),
    case(put(f"{T}/rl/nonfinite", True), "profiles.tiny.rl.nonfinite", "quote", id="nonfinite-bool"),
    case(put(f"{T}/rl/optimizer", "sgd"), "profiles.tiny.rl.optimizer", "adamw", id="optimizer-sgd"),
    case(put(f"{T}/rl/template", "chat"), "profiles.tiny.rl.template", id="template-chat"),
    case(put(f"{T}/rl/lr", 0), "profiles.tiny.rl.lr", id="rl.lr-0"),
    case(put(f"{T}/rl/eval_every", 0), "profiles.tiny.rl.eval_every", id="eval_every-0"),
    case(put(f"{T}/rl/checkpoint_every", -1), "profiles.tiny.rl.checkpoint_every", id="checkpoint_every-neg"),
    case(put(f"{T}/rl/forward_batch_size", 0), "profiles.tiny.rl.forward_batch_size", id="forward_batch_size-0"),
    case(put(f"{T}/rl/epochs", 0), "profiles.tiny.rl.epochs", id="epochs-0"),
    case(put(f"{T}/rl/max_new_tokens", 0), "profiles.tiny.rl.max_new_tokens", id="rl.max_new_tokens-0"),
    case(put(f"{T}/rl/steps", "ten"), "profiles.tiny.rl.steps", "integer", id="steps-string"),
    case(put(f"{T}/rl/steps", 1.5), "profiles.tiny.rl.steps", "integer", id="steps-float"),
    case(text("      lr: 3.0e-4", '      lr: "3e-4"'), "profiles.tiny.rl.lr", "without quotes", id="lr-quoted"),
    # -------------------------------------------------------------- rl.rollout
    case(put(f"{T}/rl/rollout/tis_cap", 0.5), "profiles.tiny.rl.rollout.tis_cap", ">= 1", id="tis_cap-0.5"),
    case(put(f"{T}/rl/rollout/gpu_memory_utilization", 1.0), "profiles.tiny.rl.rollout.gpu_memory_utilization",
         "(0, 1)", id="gpu_mem-1"),
    case(put(f"{T}/rl/rollout/max_model_len", -1), "profiles.tiny.rl.rollout.max_model_len", id="max_model_len-neg"),
    case(put(f"{T}/rl/rollout/max_num_seqs", -1), "profiles.tiny.rl.rollout.max_num_seqs", id="max_num_seqs-neg"),
    case(put(f"{T}/rl/rollout/backend", "sglang"), "profiles.tiny.rl.rollout.backend", "hf, vllm", id="backend-sglang"),
    case(text("tis: auto ", "tis: on "), "more_profiles.consumer-gpu.rl.rollout.tis", "quote", "on/off",
         id="tis-on-unquoted"),
    case(put(f"{T}/rl/rollout", []), "profiles.tiny.rl.rollout", "mapping", id="rollout-list"),
    case(put(f"{T}/rl/rollout/colocate", True), "profiles.tiny.rl.rollout.colocate", id="rollout-unknown-key"),
    # -------------------------------------------------------------- eval
    case(put(f"{T}/eval/batch_size", 0), "profiles.tiny.eval.batch_size", id="eval.batch_size-0"),
    case(put(f"{T}/eval/max_new_tokens", 0), "profiles.tiny.eval.max_new_tokens", id="eval.max_new_tokens-0"),
    case(put(f"{T}/eval/seed", -1), "profiles.tiny.eval.seed", id="eval.seed-neg"),
    case(put(f"{T}/eval/n_samples", 0), "profiles.tiny.eval.n_samples", id="n_samples-0"),
    case(put(f"{T}/eval/limit", -1), "profiles.tiny.eval.limit", id="limit-neg"),
    case(put(f"{T}/eval/verify_timeout", 0), "profiles.tiny.eval.verify_timeout", id="verify_timeout-0"),
    case(put(f"{T}/eval/verify_workers", -1), "profiles.tiny.eval.verify_workers", id="verify_workers-neg"),
    case(put(f"{C}/eval/benchmarks", ["math501"]), "more_profiles.consumer-gpu.eval.benchmarks", "math500",
         id="benchmarks-unknown"),
    case(put(f"{C}/eval/benchmarks", ["aime24", "aime24"]), "more_profiles.consumer-gpu.eval.benchmarks", "twice",
         id="benchmarks-dup"),
    case(put(f"{C}/eval/revisions", {"math501": "x"}), "more_profiles.consumer-gpu.eval.revisions.math501",
         id="eval.revisions-unknown"),
    case(put(f"{C}/eval/revisions", {"math500": ""}), "more_profiles.consumer-gpu.eval.revisions.math500",
         id="eval.revisions-empty"),
    case(put(f"{C}/eval/revisions", {"math500": False}), "more_profiles.consumer-gpu.eval.revisions.math500",
         "quote", id="eval.revisions-bool"),
    case(put(f"{T}/eval/backend", "sglang"), "profiles.tiny.eval.backend", id="eval.backend"),
    case(put(f"{T}/eval/template", "chat"), "profiles.tiny.eval.template", id="eval.template"),
    case(put(f"{T}/eval/data_source", ""), "profiles.tiny.eval.data_source", id="eval.data_source-empty"),
    # -------------------------------------------------------------- profile structure, extends
    case(put(f"{T}/rl", DELETE), "profiles.tiny.rl", "missing", "rl: {}", id="missing-rl"),
    case(put(f"{C}/eval", DELETE), "more_profiles.consumer-gpu.eval", "missing", id="missing-eval"),
    case(put(f"{T}/data", DELETE), "profiles.tiny.data", "missing", id="missing-data"),
    case(put(T, [1, 2]), "profiles.tiny", "mapping", id="profile-list"),
    case(put(T, "tiny"), "profiles.tiny", "mapping", id="profile-string"),
    case(put(f"{S}/extends", ["consumer-gpu"]), "more_profiles.consumer-gpu-0.5b.extends", id="extends-list"),
    case(put(f"{S}/extends", "nowhere"), "more_profiles.consumer-gpu-0.5b.extends", "nowhere", id="extends-unknown"),
    case(put(f"{C}/extends", "consumer-gpu-0.5b"), "more_profiles.consumer-gpu.extends", "cycle", id="extends-cycle"),
    case(put(f"{T}/rll", {}), "profiles.tiny.rll", id="profile-unknown-section"),
    case(put("more_profiles/tiny", {"extends": "consumer-gpu"}), "more_profiles.tiny", "unique", id="profile-twice"),
    case(put(f"{T}/description", 5), "profiles.tiny.description", id="description-int"),
    case(put(f"{T}/data", []), "profiles.tiny.data", "mapping", id="section-list"),
    case(lambda p: p["profiles"]["tiny"]["rl"].__setitem__(1, 2), "profiles.tiny.rl", "strings", id="section-int-key"),
    case(put("profiles", [1]), "profiles", "mapping", id="profiles-list"),
    case(put("more_profiles", "consumer-gpu"), "more_profiles", "mapping", id="more_profiles-string"),
    case(put("objectives", ["grpo"]), "objectives", "mapping", id="objectives-list"),
    case(put("studdy", {}), "unknown top-level key 'studdy'", id="unknown-top-level"),
    case(lambda p: p.clear(), "profiles", "defines no profiles", "extends", id="empty-file"),
    case([put("profiles", DELETE), put("more_profiles", DELETE)], "profiles", "defines no profiles",
         id="no-profiles"),
    # -------------------------------------------------------------- objectives: variants name their own key
    case(put(f"{O}/paec-no_penalty/penalty_coef", -1), "objectives.paec-no_penalty.penalty_coef", id="variant-unknown"),
    case(put(f"{O}/paec-no_penalty/coef", -1), "objectives.paec-no_penalty.coef", ">= 0", id="variant-coef-neg"),
    case(put(f"{O}/paec-no_mask/rho", 1.0), "objectives.paec-no_mask.rho", "[0, 1)", id="variant-rho"),
    case(put(f"{O}/dapo-bf16/logprob_dtype", "fp8"), "objectives.dapo-bf16.logprob_dtype", id="variant-dtype"),
    case(put(f"{O}/erpo-no_gate/n_buckets", 0), "objectives.erpo-no_gate.n_buckets", id="variant-buckets"),
    case(put(f"{O}/erpo-group_norm/progress_norm", "bucket"), "objectives.erpo-group_norm.progress_norm",
         id="variant-progress_norm"),
    case(put(f"{O}/paec-no_penalty/method", "paek"), "objectives.paec-no_penalty.method", "paek",
         id="variant-method-unknown"),
    case(put(f"{O}/paec-no_penalty/method", ["paec"]), "objectives.paec-no_penalty.method", id="variant-method-list"),
    case(put(f"{O}/paec-x", {"method": "paec-no_mask"}), "objectives.paec-x.method", "itself a variant",
         id="variant-of-variant"),
    case(put(f"{O}/paec-x", {"extends": "paec"}), "objectives.paec-x.extends", id="objective-extends"),
    case(put(f"{O}/grpo", [1]), "objectives.grpo", "mapping", id="objective-list"),
    case(put(f"{O}/dapo", "x"), "objectives.dapo", "mapping", id="objective-string"),
    case(put(f"{O}/foo", {}), "objectives.foo", "method", id="objective-not-registered"),
    case(put(f"{O}/paec-no_penalty/penalty", "no"), "objectives.paec-no_penalty.penalty", "true/false",
         id="variant-bool-string"),
    case(text("logprob_dtype: bfloat16", "logprob_dtype: on"), "objectives.dapo-bf16.logprob_dtype", "quote",
         id="objective-yaml-on"),
    # -------------------------------------------------------------- every objective family
    case(put(f"{O}/grpo/clip_low", 1.5), "objectives.grpo.clip_low", "[0, 1]", id="clip_low"),
    case(put(f"{O}/grpo/clip_high", -0.1), "objectives.grpo.clip_high", id="clip_high-neg"),
    case(put(f"{O}/grpo/clip_ratio_c", 1.0), "objectives.grpo.clip_ratio_c", "> 1", id="clip_ratio_c-1"),
    case(put(f"{O}/grpo/l_max", 0), "objectives.grpo.l_max", id="l_max-0"),
    case(put(f"{O}/grpo/advantage", "ppo"), "objectives.grpo.advantage", "rloo", id="advantage-ppo"),
    case(put(f"{O}/grpo/agg", "mean"), "objectives.grpo.agg", "token-mean", id="agg-mean"),
    case(put(f"{O}/grpo/max_gen_batches", 1.5), "objectives.grpo.max_gen_batches", "integer", id="max_gen_batches"),
    case(put(f"{O}/dr_grpo/overlong_buffer", 1.0), "objectives.dr_grpo.overlong_buffer", "[0, 1)", id="overlong_buffer"),
    case(put(f"{O}/dapo/overlong_penalty", -1), "objectives.dapo.overlong_penalty", id="overlong_penalty-neg"),
    case(put(f"{O}/dapo/kl_coef", -0.1), "objectives.dapo.kl_coef", id="kl_coef-neg"),
    case(put(f"{O}/dapo/dynamic_sampling", "yes"), "objectives.dapo.dynamic_sampling", id="dynamic_sampling-str"),
    case(put(f"{O}/entropy_bonus/coef_min", 0.5), "objectives.entropy_bonus.coef_min", "coef_max", id="coef_min>max"),
    case(put(f"{O}/entropy_bonus/coef", 0.5), "objectives.entropy_bonus.coef", "[0.0, 0.1]", id="bonus-coef"),
    case(put(f"{O}/entropy_bonus/delta", -1), "objectives.entropy_bonus.delta", id="bonus-delta"),
    case(put(f"{O}/entropy_bonus/target", -0.1), "objectives.entropy_bonus.target", id="bonus-target"),
    case(put(f"{O}/high_entropy_mask/rho", 0), "objectives.high_entropy_mask.rho", "(0, 1]", id="hem-rho"),
    case(put(f"{O}/high_entropy_mask/stat_scope", "global"), "objectives.high_entropy_mask.stat_scope", id="scope"),
    case(put(f"{O}/clip_cov/clip_ratio", 2), "objectives.clip_cov.clip_ratio", id="clip_ratio-2"),
    case(put(f"{O}/clip_cov/cov_lb", 6), "objectives.clip_cov.cov_lb", "cov_ub", id="cov_lb>ub"),
    case(put(f"{O}/clip_cov/clip_ratio_c", 3.0), "objectives.clip_cov.clip_ratio_c", "dual clipping", id="cc-dual"),
    case(put(f"{O}/kl_cov/k", 2), "objectives.kl_cov.k", "a fraction, not a percent", id="kl_cov.k-2"),
    case(put(f"{O}/kl_cov/coef", -1), "objectives.kl_cov.coef", id="kl_cov.coef-neg"),
    case(put(f"{O}/cov_annealed/anneal_start", 1.0), "objectives.cov_annealed.anneal_start", id="anneal_start-1"),
    case(put(f"{O}/cov_annealed/anneal_final", 1.5), "objectives.cov_annealed.anneal_final", id="anneal_final"),
    case(put(f"{O}/cov_annealed/schedule", "exp"), "objectives.cov_annealed.schedule", "cosine", id="schedule"),
    case(put(f"{O}/cov_annealed/regularizer", "entropy"), "objectives.cov_annealed.regularizer", id="regularizer"),
    case(put(f"{O}/erpo/gamma", -1), "objectives.erpo.gamma", id="erpo.gamma-neg"),
    case(put(f"{O}/erpo/eta", -0.1), "objectives.erpo.eta", id="erpo.eta-neg"),
    case(put(f"{O}/erpo/beta_p", 0), "objectives.erpo.beta_p", "> 0", id="erpo.beta_p-0"),
    case(put(f"{O}/erpo/eps", 0), "objectives.erpo.eps", id="erpo.eps-0"),
    case(put(f"{O}/erpo/min_bucket_tokens", 0), "objectives.erpo.min_bucket_tokens", id="erpo.min_bucket"),
    case(put(f"{O}/erpo/progress_ref", "old"), "objectives.erpo.progress_ref", "stats_from", id="erpo.progress_ref"),
    case(put(f"{O}/repo/zeta_min", 0), "objectives.repo.zeta_min", "> 0", id="zeta_min-0"),
    case(put(f"{O}/repo/zeta_max", 1e-5), "objectives.repo.zeta_min", "zeta_max", id="zeta_min>max"),
    case(put(f"{O}/repo/zeta", 0.5), "objectives.repo.zeta", "zeta_max", id="repo.zeta"),
    case(put(f"{O}/repo/logp_floor", 0), "objectives.repo.logp_floor", "< 0", id="logp_floor-0"),
    case(put(f"{O}/repo_r/target_entropy", -1), "objectives.repo_r.target_entropy", id="target_entropy-neg"),
    case(put(f"{O}/adapo/clip_factor", 1.0), "objectives.adapo.clip_factor", "> 1", id="clip_factor-1"),
    case(put(f"{O}/adapo/clip_high_min", 0.6), "objectives.adapo.clip_high_min", "clip_high_max", id="clip_hi_min"),
    case(put(f"{O}/adapo/clip_high", 0.6), "objectives.adapo.clip_high", "[0.2, 0.5]", id="adapo.clip_high"),
    case(put(f"{O}/paec/anchor_steps", 0), "objectives.paec.anchor_steps", id="anchor_steps-0"),
    case(put(f"{O}/paec/mask_temperature", 0), "objectives.paec.mask_temperature", id="mask_temperature-0"),
    case(put(f"{O}/paec/top_p", 0), "objectives.paec.top_p", "(0, 1]", id="top_p-0"),
    case(put(f"{O}/paec/competition_weight", 1.5), "objectives.paec.competition_weight", id="competition_weight"),
    case(put(f"{O}/paec/bonus_coef", -1), "objectives.paec.bonus_coef", id="bonus_coef-neg"),
    case(put(f"{O}/paec/rho_min", -0.1), "objectives.paec.rho_min", id="rho_min-neg"),
    case(put(f"{O}/grpo_whitened/eps", 0), "objectives.grpo_whitened.eps", id="whitened.eps-0"),
    # -------------------------------------------------------------- run matrices
    case(put("rl_runs/profiles", ["consumer-gpu"]), "rl_runs.profiles[0]", "active profile", id="rl_runs-inactive"),
    case(put("rl_runs/objectives", ["grpp"]), "rl_runs.objectives[0]", "no entry", id="rl_runs-objective"),
    case(put("rl_runs/seeds", [-1]), "rl_runs.seeds[0]", ">= 0", id="rl_runs-seed-neg"),
    case(put("rl_runs/seeds", ["0"]), "rl_runs.seeds[0]", "integers", id="rl_runs-seed-str"),
    case(put("rl_runs/seeds", 0), "rl_runs.seeds", "list", id="rl_runs-seeds-int"),
    case(put("rl_runs/seeds", []), "rl_runs.seeds", "empty", id="rl_runs-seeds-empty"),
    case(put("rl_runs/seeds", [0, 0]), "rl_runs.seeds", "twice", id="rl_runs-seeds-dup"),
    case(put("rl_runs/objective", ["grpo"]), "rl_runs.objective", id="rl_runs-unknown-key"),
    case(put("rl_runs/profiles", DELETE), "rl_runs.profiles", "missing", id="rl_runs-no-profiles"),
    case(put("rl_runs", [1]), "rl_runs", "mapping", id="rl_runs-list"),
    case(put("study/profile", "nope"), "study.profile", "nope", id="study-profile"),
    case(put("study/profile", DELETE), "study.profile", id="study-no-profile"),
    case(put("study/objectives", ["grpo", "grpo"]), "study.objectives", "twice", id="study-objectives-dup"),
    case(put("study/seeds", [True]), "study.seeds[0]", id="study-seed-bool"),
    # -------------------------------------------------------------- YAML: duplicate keys, syntax
    case(text("      grad_clip: 1.0\n      eval_every: 10\n", "      grad_clip: 1.0\n      grad_clip: 2.0\n"
              "      eval_every: 10\n"), "profiles.tiny.rl.grad_clip", "duplicate key", "lines 49 and 50",
         id="dup-key-rl"),
    case(text("  grpo_whitened: {}", "  grpo_whitened: {}\n  grpo: {kl_coef: 0.04}"), "objectives.grpo",
         "duplicate key", id="dup-objective"),
    case(text("more_profiles:\n", "  tiny: {}\nmore_profiles:\n"), "profiles.tiny", "duplicate key", id="dup-profile"),
    case(text("rl_runs:\n", "rl_runs: [\nrl_runs:\n"), "not valid YAML", "line", id="yaml-syntax"),
    # -------------------------------------------------------------- overrides
    case([], "overrides", "mapping", call=profile("tiny", "rl.steps=3"), id="overrides-string"),
    case([], "overrides['rl.steps.x']", "profiles.tiny.rl.steps", call=profile("tiny", {"rl.steps.x": 3}),
         id="override-into-scalar"),
    case([], "overrides", "dotted", call=profile("tiny", {1: 3}), id="override-int-key"),
    case([], "overrides['rl..steps']", call=profile("tiny", {"rl..steps": 3}), id="override-empty-part"),
    case([], "profiles.tiny.rl.grad_clip", call=profile("tiny", {"rl.grad_clip": -1}), id="override-grad_clip"),
    case([], "profiles.tiny.rl.temperature", call=profile("tiny", {"rl.temperature": NAN}), id="override-nan"),
    case([], "profiles.tiny.data.ops", call=profile("tiny", {"data.ops": []}), id="override-ops"),
    case([], "profiles.tiny.rl.lr", call=check(profile="tiny", overrides={"rl.lr": 0}), id="check-override"),
    case([], "more_profiles.consumer-gpu.rl.rollout.tis_cap",
         call=check(profile="consumer-gpu", overrides={"rl.rollout.tis_cap": INF}), id="check-override-gpu"),
    case([], "overrides", "without a profile", call=check(overrides={"rl.steps": 3}), id="overrides-no-profile"),
    case([], "unknown profile 'nope'", call=check(profile="nope"), id="check-unknown-profile"),
    case([], "profile", call=check(profile=["tiny"]), id="check-profile-list"),
    case([], "unknown objective 'nope'", call=check(objective="nope"), id="check-unknown-objective"),
    case([], "objectives.grpo.clip_low", call=objective("grpo", {"clip_low": 2}), id="objective-override"),
    case([], "objectives.paec-no_penalty.coef", call=objective("paec-no_penalty", {"coef": -1}),
         id="variant-override"),
    case([], "overrides", call=objective("paec-no_penalty", "coef=1"), id="objective-overrides-string"),
]

GOOD = [
    pytest.param(text("      lr: 3.0e-4", "      lr: 3e-4"), lambda p: load_profile(p, "tiny").rl.lr == 3e-4,
                 id="lr-3e-4-without-dot"),
    pytest.param(text("lr: 2.0e-5", "lr: 2e-5"), lambda p: load_profile(p, "consumer-gpu").rl.lr == 2e-5,
                 id="lr-2e-5"),
    pytest.param(put(f"{T}/sft", {}), lambda p: load_profile(p, "tiny").sft == config.SFTConfig(), id="explicit-{}"),
    pytest.param(put(f"{C}/data/revisions", {"gsm8k": "e53f048", "math_l3_5": "main"}),
                 lambda p: load_profile(p, "consumer-gpu-0.5b").data.revisions["gsm8k"] == "e53f048",
                 id="data.revisions"),
    pytest.param(put(f"{C}/eval/revisions", {"math500": "ff5b202"}),
                 lambda p: load_profile(p, "consumer-gpu").eval.revisions == {"math500": "ff5b202"}, id="eval.revisions"),
    pytest.param(put(f"{C}/model/revision", "v1.2"), lambda p: load_profile(p, "consumer-gpu").model.revision == "v1.2",
                 id="model.revision"),
    pytest.param(put(f"{T}/rl/nonfinite", "skip"), lambda p: load_profile(p, "tiny").rl.nonfinite == "skip",
                 id="nonfinite-skip"),
    pytest.param(text("tis: auto ", 'tis: "on" '), lambda p: load_profile(p, "consumer-gpu").rl.rollout.tis == "on",
                 id="tis-quoted-on"),
    pytest.param(put(f"{T}/data/ops", ["+", "-", "*"]), lambda p: len(load_profile(p, "tiny").data.ops) == 3,
                 id="three-ops"),
    pytest.param([put(f"{T}/rl/temperature", 0.01), put(f"{T}/eval/temperature", 10)],
                 lambda p: load_profile(p, "tiny").eval.temperature == 10.0, id="temperature-bounds"),
    pytest.param([put(f"{T}/data/n_rl", 16), put(f"{T}/rl/eval_prompts", 200)],
                 lambda p: load_profile(p, "tiny").rl.prompts_per_step == 16, id="pps-equal-n_rl"),
    pytest.param([put(f"{O}/grpo/clip_ratio_c", 3.0), put(f"{O}/adapo/target_entropy", None)],
                 lambda p: load_objective("grpo", p)[1].clip_ratio_c == 3.0, id="optional-floats"),
    pytest.param(text("  paec: {}", "  paec: &paec {rho: 0.7}\n  paec-x: {<<: *paec, method: paec, rho: 0.75}"),
                 lambda p: load_objective("paec-x", p)[1].rho == 0.75, id="anchor-merge-override"),
    pytest.param([], lambda p: preflight.check(p, profile="tiny", objective="paec-no_mask",
                                               overrides={"rl.steps": 3})["profiles"] == 4, id="check-with-overrides"),
    pytest.param(put(f"{O}/grpo/max_gen_batches", 0), lambda p: load_objective("grpo", p)[1].max_gen_batches == 0,
                 id="max_gen_batches-unlimited"),
]


@pytest.mark.parametrize("mutation, key, extra, call", BAD)
def test_a_bad_params_file_is_refused_naming_the_key(tmp_path, mutation, key, extra, call):
    p = write_mutated(tmp_path, mutation)
    with pytest.raises(Exception) as err:
        call(p)
    assert type(err.value) is ConfigError, f"{type(err.value).__name__}: {err.value}"
    msg = str(err.value)
    assert "\n" not in msg, msg
    assert key in msg, msg
    if not msg.startswith(("unknown ", str(tmp_path))):
        assert msg.startswith(key), msg  # key first
    for fragment in extra:
        assert fragment in msg, msg
    assert msg.count("profiles.") <= 3 and f"{key}: {key}" not in msg, msg  # the path comes out once


def test_the_table_is_large_and_distinct():
    assert len(BAD) >= 120 and len({p.id for p in BAD}) == len(BAD)


@pytest.mark.parametrize("mutation, ok", GOOD)
def test_a_valid_mutation_loads(tmp_path, mutation, ok):
    p = write_mutated(tmp_path, mutation)
    preflight.check(p)
    assert ok(p)


def test_the_committed_params_pass_preflight():
    summary = preflight.check(PARAMS_FILE)
    assert summary["profiles"] == len(PARAMS["profiles"]) + len(PARAMS["more_profiles"])
    assert summary["objectives"] == len(PARAMS["objectives"]) and summary["rl_runs"] > 0 and summary["study"] > 0
    assert preflight.check(PARAMS_FILE, profile="tiny", objective="grpo", overrides={"rl.steps": 3})


def test_the_unmutated_dump_passes_too(tmp_path):
    """The table's mutations start from a faithful copy."""
    p = write_mutated(tmp_path, [])
    assert preflight.check(p) == preflight.check(PARAMS_FILE)
    assert load_profile(p, "consumer-gpu-0.5b") == load_profile(PARAMS_FILE, "consumer-gpu-0.5b")


def test_the_params_loader_reads_yaml_1_2_floats_and_leaves_pyyaml_alone():
    assert config.load_yaml("a: 3e-4\nb: 1e-40\nc: 1.0e5\nd: 3\ne: e53f048\nf: .5\n") == {
        "a": 3e-4, "b": 1e-40, "c": 1e5, "d": 3, "e": "e53f048", "f": 0.5}
    assert yaml.safe_load("a: 3e-4") == {"a": "3e-4"}  # the subclass changed no global resolver
    merged = config.load_yaml("x: &x {a: 1, b: 2}\ny: {<<: *x, b: 3}\n")  # overriding a merged key is no duplicate
    assert merged["y"] == {"a": 1, "b": 3}
    with pytest.raises(ConfigError, match=r"^y\.b: duplicate key \(lines 2 and 2"):
        config.load_yaml("x: 1\ny: {b: 1, b: 2}\n")


def test_make_objective_config_names_the_entry_it_is_told():
    from entropy_rl.objectives import make_objective_config

    with pytest.raises(ConfigError, match=r"^objectives\.paec-a\.coef: must be >= 0, got -1\.0$"):
        make_objective_config("paec", {"coef": -1}, where="objectives.paec-a")
    with pytest.raises(ConfigError, match=r"^objectives\.paec\.coef: "):  # the old two-argument call
        make_objective_config("paec", {"coef": -1})
    with pytest.raises(ConfigError, match=r"^objectives\.paec-a\.method: unknown objective 'paek'"):
        make_objective_config("paek", {}, where="objectives.paec-a")


def cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "entropy_rl.preflight", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_cli_prints_one_line(tmp_path):
    good = cli(PARAMS_FILE)
    assert good.returncode == 0 and good.stdout.count("\n") == 1 and ": OK (" in good.stdout, good
    bad = write_mutated(tmp_path, put(f"{T}/rl/grad_clip", -1))
    out = cli(bad)
    assert out.returncode == 2, out
    assert out.stdout == f"{bad}: profiles.tiny.rl.grad_clip: must be > 0, got -1.0\n", out
    assert "Traceback" not in out.stdout + out.stderr
    missing = cli(tmp_path / "nope.yaml")
    assert missing.returncode == 2 and missing.stdout.count("\n") == 1 and "not found" in missing.stdout


def _numeric(tp) -> bool:
    return tp in (int, float) or any(a in (int, float) for a in typing.get_args(tp))


CONFIG_CLASSES = [config.DataConfig, config.LoraConfig, config.ModelConfig, config.SFTConfig, config.RolloutConfig,
                  config.RLConfig, config.EvalConfig, *{s.config_cls for s in SPECS.values()}]


@pytest.mark.parametrize("cls", CONFIG_CLASSES, ids=lambda c: c.__name__)
def test_every_numeric_field_has_a_declared_range(cls):
    hints = typing.get_type_hints(cls)
    numeric = {f.name for f in dataclasses.fields(cls) if _numeric(hints[f.name])}
    ranges = ranges_of(cls)
    assert numeric <= set(ranges), f"{cls.__name__}: no range for {sorted(numeric - set(ranges))}"
    assert set(ranges) <= {f.name for f in dataclasses.fields(cls)}, cls.__name__
    defaults = cls()
    for name, rng in ranges.items():  # the defaults lie in their ranges, and none is infinite
        v = getattr(defaults, name)
        assert v is None or (v in rng and math.isfinite(v)), (cls.__name__, name, v)
