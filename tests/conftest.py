import os
from pathlib import Path

import pandas as pd
import pytest
import torch

from entropy_rl.io import write_json

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("ENTROPY_RL_SHARED_DATA", ROOT.parent / "shared" / "data"))

os.environ.setdefault("ENTROPY_RL_PROGRESS", "off")
torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_tok():
    from entropy_rl.model import char_tokenizer

    return char_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tok):
    """A tiny Llama (random weights, 2 layers) saved in Hugging Face format, with its tokenizer."""
    from entropy_rl.config import ModelConfig
    from entropy_rl.model import build_tiny

    d = tmp_path_factory.mktemp("tiny_model")
    cfg = ModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)
    build_tiny(cfg, tiny_tok, seed=0).save_pretrained(d)
    tiny_tok.save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def small_model_cfg():
    from entropy_rl.config import LoraConfig, ModelConfig

    return ModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, lora=LoraConfig(r=4, alpha=8))


def run_objective(name, logp, old, adv, mask, entropy=None, state=None, scope=None, **cfg):
    """Call registered objective ``name`` on hand-built tensors with its config built from ``cfg``."""
    from entropy_rl.objectives import RLBatch, get_objective, make_objective_config
    from entropy_rl.token_stats import TokenStats

    stats = TokenStats(logp=logp, entropy=torch.zeros_like(logp) if entropy is None else entropy)
    batch = RLBatch(old_logp=old, advantages=adv, mask=mask, scope=scope)
    return get_objective(name)(batch, stats, make_objective_config(name, cfg), state or {})


def fake_run(root, name, entropy, metrics, steps=4, logged=None):
    """A run directory as the notebooks write it (curves, held-out points, eval metrics); entropy moves linearly
    from entropy[0] to entropy[1]; ``logged``: more step-log keys, each a constant or a list over the steps."""
    d = root / name
    (d / "train").mkdir(parents=True)
    e0, e1 = entropy
    rows = [{"step": s, "stats/entropy": e0 + (e1 - e0) * s / (steps - 1), "stats/response_length": 10.0 + s,
             "reward/mean": 0.5} for s in range(steps)]
    for k, v in (logged or {}).items():
        for s, row in enumerate(rows):
            row[k] = v[s] if isinstance(v, (list, tuple)) else v
    pd.DataFrame(rows).to_csv(d / "train" / "curves.csv", index=False)
    pd.DataFrame([{"step": 0, "heldout/pass@1": 0.4}, {"step": steps, "heldout/pass@1": 0.6}]).to_csv(
        d / "train" / "heldout.csv", index=False)
    write_json(d / "eval" / "metrics.json", {"n_samples": 8, "pass@1": 0.0, "pass@8": 0.0, "maj@8": 0.0,
                                             "mean_length": 10.0, "mean_token_entropy": 0.1, **metrics})
