"""The suite's objectives inside TRL: a ``trl.GRPOTrainer`` whose loss is a registered objective (docs/scaling.md).

TRL keeps what it does well -- sampling (``generate`` or a vLLM server), rewards, group advantages, the old and
reference log-probs, accelerate / DeepSpeed, checkpoints -- and :class:`EntropyRLGRPOTrainer` replaces only
``_compute_loss``, the method TRL's ``compute_loss`` calls for each micro-batch:

1. the current policy's token statistics come from the project's fused pass (:func:`entropy_rl.token_stats.
   token_stats`) over the decoder's final hidden states and the LM head (log-prob, full-vocabulary entropy, top-p
   entropy and the top-two gap: what every objective, PAEC included, reads);
2. TRL's inputs become the objective's :class:`~entropy_rl.objectives.RLBatch` (:data:`TRL_INPUTS`):
   ``completion_mask`` (times ``tool_mask``) -> ``mask``; ``advantages [B]`` -> broadcast over the response and
   masked; ``old_per_token_logps`` -> ``old_logp`` (TRL leaves it None when the batch is on-policy: then the
   current log-probs, detached, exactly as TRL does); ``ref_per_token_logps`` -> ``ref_logp`` (TRL computes it
   when ``beta != 0``); ``importance_sampling_ratio`` (vLLM) -> ``is_weights``; ``max_completion_length`` ->
   ``l_max``;
3. the objective registered under the preset's method is called unchanged; under gradient accumulation each
   micro-batch's loss is weighted by its share of the accumulation window's aggregation denominator (all ranks
   together), so the accumulated gradient is the window's, as in ``entropy_rl.rl.update``; for
   ``stat_scope: minibatch`` objectives the window's statistics (a no-grad pass over its micro-batches, which TRL
   already holds in ``_buffered_inputs``) are handed to each micro-batch as ``RLBatch.scope``;
4. the objective's controller (REPO's zeta, ADAPO's eps_high, PAEC's H0, the entropy bonus's adaptive alpha, the
   annealing step) lives in :attr:`EntropyRLGRPOTrainer.controller_state`, is updated once per generation round
   (TRL's RL step: ``steps_per_generation * num_iterations`` micro-steps) from that round's mean metrics, and is
   saved in every checkpoint (``entropy_rl_state.json``) and restored by ``train(resume_from_checkpoint=...)``.

What TRL cannot supply is refused by name when the trainer is built (:func:`check_trl_support`): ERPO (whole-group
rollout entropies and group ids), DAPO's rollout-level options (dynamic sampling, overlong shaping), the RLOO
estimator, and TRL options whose loss terms the objective would silently replace.

Scale-out (accelerate DDP, vLLM server mode) needs nothing more; DeepSpeed ZeRO-3 / FSDP full sharding are not
supported: the fused pass reads ``lm_head.weight`` outside the module's forward, where those engines shard it.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any

import torch
import trl
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from entropy_rl.config import ConfigError
from entropy_rl.objectives import (RLBatch, StatScope, agg_denominator, get_objective, init_controller_state,
                                   load_objective, update_controller_state)
from entropy_rl.token_stats import TokenStats, token_stats

STATE_FILE = "entropy_rl_state.json"
"""the controller state's file inside each ``checkpoint-N`` folder"""

TRL_INPUTS = {
    "mask": "completion_mask (x tool_mask)",
    "advantages": "advantages [B], broadcast over the response and masked",
    "old_logp": "old_per_token_logps (None when on-policy: the current log-probs, detached, as TRL)",
    "ref_logp": "ref_per_token_logps (computed by TRL when GRPOConfig.beta != 0)",
    "is_weights": "importance_sampling_ratio (vLLM with vllm_importance_sampling_correction)",
    "l_max": "GRPOConfig.max_completion_length",
}
"""where each :class:`RLBatch` field comes from in TRL's inputs"""

TRL_UNSUPPORTED = {
    "erpo": "old_entropy (token entropies of the rollout pass over whole prompt groups) and group_ids: TRL computes "
            "no rollout entropies and shuffles the rows of a generation batch across micro-batches",
}
"""objectives whose inputs TRL's GRPOTrainer cannot supply, and the missing inputs"""

ADVANTAGE_TO_SCALE_REWARDS = {"grpo": "group", "dr_grpo": "none"}
"""the objective's ``advantage`` estimator -> TRL's ``scale_rewards`` (TRL computes the advantages; its std eps is
1e-4 where the project's is 1e-6)"""


def _scale_rewards(value) -> str:
    if value is True:
        return "group"
    if value is False:
        return "none"
    return str(value)


def check_trl_support(name: str, method: str, cfg, args, ignore_rollout_options: bool = False) -> None:
    """Raise :class:`ConfigError`, naming the objective, when TRL (``args``: a ``trl.GRPOConfig``) cannot supply
    what the objective needs, or when a TRL option would be silently dropped by replacing the loss."""
    if method in TRL_UNSUPPORTED:
        raise ConfigError(f"objective '{name}' ({method}) cannot run inside TRL's GRPOTrainer: it needs "
                          f"{TRL_UNSUPPORTED[method]}. Run it with the project's loop, or in verl (docs/scaling.md)")
    rollout = [k for k, on in (("dynamic_sampling", cfg.dynamic_sampling), ("overlong_buffer", cfg.overlong_buffer > 0))
               if on]
    if rollout and not ignore_rollout_options:
        raise ConfigError(
            f"objective '{name}': {' and '.join(rollout)} act on the rollouts and rewards, which TRL's GRPOTrainer "
            f"does not implement. Switch them off (overrides={{'dynamic_sampling': False, 'overlong_buffer': 0.0}}; "
            f"for the overlong penalty add trl.rewards.get_soft_overlong_punishment to the reward functions) or pass "
            f"ignore_rollout_options=True to run the loss without them")
    if cfg.advantage not in ADVANTAGE_TO_SCALE_REWARDS:
        raise ConfigError(f"objective '{name}': advantage '{cfg.advantage}' is not an estimator of TRL's "
                          f"GRPOTrainer (it supports {sorted(ADVANTAGE_TO_SCALE_REWARDS)})")
    want = ADVANTAGE_TO_SCALE_REWARDS[cfg.advantage]
    if _scale_rewards(args.scale_rewards) != want:
        raise ConfigError(f"objective '{name}': advantage '{cfg.advantage}' is TRL's scale_rewards='{want}', got "
                          f"scale_rewards={args.scale_rewards!r}")
    if float(args.beta) != float(cfg.kl_coef):
        raise ConfigError(
            f"objective '{name}': kl_coef = {cfg.kl_coef} must equal GRPOConfig.beta (got {args.beta}): TRL computes "
            f"the reference log-probs (ref_logp) only when beta != 0, and the objective adds kl_coef x KL itself")
    dropped = {
        "top_entropy_quantile": args.top_entropy_quantile != 1.0,
        "entropy_coef": args.entropy_coef != 0.0,
        "use_adaptive_entropy": bool(args.use_adaptive_entropy),
        "off_policy_mask_threshold": args.off_policy_mask_threshold is not None,
        "importance_sampling_level": args.importance_sampling_level != "token",
        "delta": args.delta is not None,
        "use_liger_kernel": bool(getattr(args, "use_liger_kernel", False)),
    }
    if any(dropped.values()):
        raise ConfigError(f"objective '{name}': the GRPOConfig options {[k for k, v in dropped.items() if v]} change "
                          f"TRL's own loss, which the objective replaces; leave them at their defaults (the entropy "
                          f"bonus and the 80/20 mask are the objectives entropy_bonus and high_entropy_mask)")
    ga = args.gradient_accumulation_steps
    if args.steps_per_generation % ga:
        raise ConfigError(f"objective '{name}': steps_per_generation ({args.steps_per_generation}) must be a multiple "
                          f"of gradient_accumulation_steps ({ga}), so that each optimizer update is one window of "
                          f"micro-batches of one generation batch")


WindowScope = StatScope
"""the statistics of a whole accumulation window, handed to each micro-batch as ``RLBatch.scope``"""


def minibatch_scope(cfg) -> bool:
    """True when the objective takes a selection statistic over the whole update batch (``stat_scope: minibatch``)."""
    return cfg.needs().stat_scope == "minibatch"


def round_logp(x: torch.Tensor | None, dtype: str) -> torch.Tensor | None:
    """``x`` rounded to ``dtype`` and back (``logprob_dtype``, the precision experiment); gradients pass."""
    if x is None or dtype == "float32":
        return x
    return x.to(getattr(torch, dtype)).to(x.dtype)


class _ControllerCallback(TrainerCallback):
    def __init__(self, trainer: "EntropyRLGRPOTrainer"):
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        self.trainer._end_update()


class EntropyRLGRPOTrainer(trl.GRPOTrainer):
    """``trl.GRPOTrainer`` with the project's objective ``objective`` (a name under ``objectives:`` in ``params``,
    or a registry name with ``params=None``) as its loss; every other argument is GRPOTrainer's.

    Args:
        objective: the preset (``kl_cov``, ``repo_r``, ``paec-no_mask``, ...).
        params: the params.yaml that holds the presets (None: registry defaults).
        overrides: settings on top of the preset (e.g. ``{"dynamic_sampling": False}``).
        ignore_rollout_options: run the loss although the preset asks for DAPO's rollout-level options (dynamic
            sampling, overlong shaping), which TRL does not implement; default: refuse, naming them.
    """

    def __init__(self, *args, objective: str, params: str | os.PathLike | None = "params.yaml",
                 overrides: dict | None = None, ignore_rollout_options: bool = False, **kwargs):
        method, cfg = load_objective(objective, params, overrides)
        super().__init__(*args, **kwargs)
        check_trl_support(objective, method, cfg, self.args, ignore_rollout_options)
        self.objective_name, self.method, self.objective_cfg = objective, method, cfg
        self.loss_fn = get_objective(method)
        self.controller_state: dict = init_controller_state(method, cfg)
        self.controller_rows: list[dict] = []
        """the rows the controller was updated from, one per generation round (the project's log rows)"""
        self.last_rl_batch: RLBatch | None = None
        """the batch of the last micro-step (for inspection and tests)"""
        self.steps_per_round = max(1, self.args.steps_per_generation * self.num_iterations
                                   // self.args.gradient_accumulation_steps)
        self._ctrl_sums: dict[str, float] = {}
        self._ctrl_updates = 0
        self._scope_cache: tuple | None = None
        self.add_callback(_ControllerCallback(self))

    # ------------------------------------------------------------------------------------------------ statistics
    def policy_token_stats(self, model, inputs: dict, mask: torch.Tensor) -> TokenStats:
        """The project's token statistics ``[B, C]`` of ``model`` on the completions of ``inputs``: the decoder's
        final hidden states (same inputs as TRL's own log-prob pass, so ratios start at 1) and the LM head through
        the fused pass; ``logp`` and ``entropy`` carry gradients."""
        prompt_ids, completion_ids = inputs["prompt_ids"], inputs["completion_ids"]
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
        attention_mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
        n = completion_ids.size(1)
        with self.accelerator.autocast():
            # through the (possibly DDP-wrapped) model, so that gradient synchronisation sees the forward; only the
            # last position's logits are computed by the model itself (the fused pass does the rest)
            out = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True,
                        logits_to_keep=1, use_cache=False)
        hidden = out.hidden_states[-1][:, -n - 1 : -1]  # position j predicts token j + 1
        head = self.accelerator.unwrap_model(model).get_output_embeddings()
        if hasattr(head, "lora_A"):
            raise NotImplementedError("LoRA on lm_head is not supported: token statistics read lm_head.weight directly")
        return token_stats(hidden, head.weight, completion_ids, mask, self.temperature, head.bias,
                           top_p=self.objective_cfg.needs().top_p, nucleus=self.objective_cfg.needs().nucleus)

    def _mask(self, inputs: dict) -> torch.Tensor:
        mask = inputs["completion_mask"]
        if "tool_mask" in inputs:
            mask = mask * inputs["tool_mask"]
        return mask.float()

    def _advantages(self, inputs: dict, mask: torch.Tensor) -> torch.Tensor:
        adv = inputs["advantages"]
        if adv.dim() == 1:
            adv = adv[:, None]
        return adv.float().expand_as(mask) * mask

    def rl_batch(self, inputs: dict, stats: TokenStats, mask: torch.Tensor, seed: int = 0) -> RLBatch:
        """The objective's batch from TRL's inputs (:data:`TRL_INPUTS`)."""
        dt = self.objective_cfg.logprob_dtype
        old = inputs.get("old_per_token_logps")
        old = stats.logp.detach() if old is None else round_logp(old.float(), dt)
        ref = inputs.get("ref_per_token_logps")
        ref = None if ref is None else round_logp(ref.float(), dt)
        is_w = None
        if getattr(self, "use_vllm", False) and getattr(self, "vllm_importance_sampling_correction", False):
            ratio = inputs.get("importance_sampling_ratio")
            is_w = None if ratio is None else ratio.float().expand_as(mask).detach()
        return RLBatch(old_logp=old, advantages=self._advantages(inputs, mask), mask=mask, ref_logp=ref,
                       l_max=self.max_completion_length, seed=seed, is_weights=is_w)

    def _window(self, inputs: dict) -> tuple[list[dict], int]:
        """The micro-batches of the accumulation window ``inputs`` belongs to, and its position in it."""
        buffer = getattr(self, "_buffered_inputs", None) or []
        idx = next((i for i, b in enumerate(buffer) if b is inputs), None)
        if idx is None:
            return [inputs], 0
        ga = self.args.gradient_accumulation_steps
        start = idx // ga * ga
        return buffer[start : start + ga], idx - start

    def window_seed(self) -> int:
        """Seed of the objective's randomness (Clip-Cov's subset) for the current update: from ``args.seed`` and the
        optimizer step; shared by the micro-batches of a window when the statistic's scope is the window."""
        return (self.args.seed * 1_000_003 + self.state.global_step) * 4099

    @torch.no_grad()
    def _window_scope(self, model, window: list[dict]) -> WindowScope:
        key = (self.state.global_step, tuple(id(b) for b in window))
        if self._scope_cache is not None and self._scope_cache[0] == key:
            return self._scope_cache[1]
        was_training = model.training
        model.eval()
        parts = []
        try:
            for b in window:
                m = self._mask(b)
                st = self.policy_token_stats(model, b, m)
                logp = round_logp(st.logp, self.objective_cfg.logprob_dtype)
                old = b.get("old_per_token_logps")
                old = logp if old is None else round_logp(old.float(), self.objective_cfg.logprob_dtype)
                parts.append((logp, st.entropy, old, self._advantages(b, m), m))
        finally:
            model.train(was_training)
        if len({p[4].shape[1] for p in parts}) != 1:
            raise ValueError("stat_scope 'minibatch': the micro-batches of a window have different completion widths")
        scope = WindowScope(*(torch.cat([p[i] for p in parts]) for i in range(5)))
        self._scope_cache = (key, scope)
        return scope

    # ------------------------------------------------------------------------------------------------ the loss
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if return_outputs:
            raise ValueError("The GRPOTrainer does not support returning outputs")
        return self._compute_loss(model, inputs)

    def _compute_loss(self, model, inputs):
        cfg = self.objective_cfg
        mode = "train" if self.model.training else "eval"
        mask = self._mask(inputs)
        window, pos = self._window(inputs) if mode == "train" else ([inputs], 0)
        seed = self.window_seed()
        if len(window) > 1 and not minibatch_scope(cfg):
            seed = seed * len(window) + pos  # its own random draws per micro-batch (as entropy_rl's loop)
        stats = self.policy_token_stats(model, inputs, mask)
        stats = dataclasses.replace(stats, logp=round_logp(stats.logp, cfg.logprob_dtype))
        batch = self.rl_batch(inputs, stats, mask, seed)
        weight, local_weight = 1.0, 1.0
        if len(window) > 1 or self.accelerator.num_processes > 1:
            dens = [agg_denominator(self._mask(b), cfg.agg) for b in window]
            local = max(sum(dens), 1.0)
            total = torch.tensor(sum(dens), dtype=torch.float64, device=mask.device)
            if self.accelerator.num_processes > 1:
                total = self.accelerator.reduce(total, reduction="sum")
            weight = dens[pos] * self.accelerator.num_processes / max(float(total), 1.0)
            local_weight = dens[pos] / local
        if minibatch_scope(cfg) and len(window) > 1:
            scope = self._window_scope(model, window)
            rows = torch.arange(pos * mask.shape[0], (pos + 1) * mask.shape[0], device=mask.device)
            batch = dataclasses.replace(batch, scope=dataclasses.replace(scope, rows=rows))
        rounds = math.ceil(max(self.state.max_steps, 1) / self.steps_per_round)
        self.controller_state.update(step=self.state.global_step // self.steps_per_round, total_steps=rounds)
        loss, metrics = self.loss_fn(batch, stats, cfg, self.controller_state)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss {loss.item()} ({self.objective_name})")
        self.last_rl_batch = batch
        for k, v in metrics.items():
            value = float(v)
            self._metrics[mode][k].append(value)
            if mode == "train":
                self._ctrl_sums[k] = self._ctrl_sums.get(k, 0.0) + local_weight * value
        return loss * weight if weight != 1.0 else loss

    # ------------------------------------------------------------------------------------------------ controllers
    def _end_update(self) -> None:
        """After each optimizer update; at the end of a generation round, the controller update."""
        self._ctrl_updates += 1
        if self.state.global_step % self.steps_per_round == 0 and self._ctrl_sums:
            self.end_round()

    def end_round(self) -> dict:
        """Update the controller state from the round's mean metrics (averaged over ranks); returns the row."""
        keys = sorted(self._ctrl_sums)
        n = max(self._ctrl_updates, 1)
        vals = torch.tensor([self._ctrl_sums[k] / n for k in keys], dtype=torch.float64, device=self.accelerator.device)
        if self.accelerator.num_processes > 1:
            vals = self.accelerator.reduce(vals, reduction="mean")
        row = dict(zip(keys, vals.tolist()))
        new = update_controller_state(self.method, self.controller_state, self.objective_cfg, row)
        self.controller_state.clear()
        self.controller_state.update(new)
        self.controller_rows.append(row)
        self._ctrl_sums, self._ctrl_updates = {}, 0
        return row

    # ------------------------------------------------------------------------------------------------ checkpoints
    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        if self.args.should_save:
            folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
            payload = {"objective": self.objective_name, "method": self.method,
                       "settings": dataclasses.asdict(self.objective_cfg), "state": self.controller_state,
                       "round_sums": self._ctrl_sums, "round_updates": self._ctrl_updates,
                       "rows": self.controller_rows}
            with open(os.path.join(folder, STATE_FILE), "w") as f:
                json.dump(payload, f, indent=1)

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None:
            return
        path = os.path.join(checkpoint, STATE_FILE)
        if not os.path.exists(path):
            raise ConfigError(f"{checkpoint}: no {STATE_FILE}, so the controller state of '{self.objective_name}' "
                              f"cannot be restored (was it written by EntropyRLGRPOTrainer?)")
        with open(path) as f:
            payload = json.load(f)
        if payload["method"] != self.method:
            raise ConfigError(f"{checkpoint}: written for objective '{payload['objective']}' ({payload['method']}), "
                              f"not '{self.objective_name}' ({self.method})")
        self.controller_state.clear()
        self.controller_state.update(payload["state"])
        self._ctrl_sums = dict(payload["round_sums"])
        self._ctrl_updates = int(payload["round_updates"])
        self.controller_rows = list(payload["rows"])
