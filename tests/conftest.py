import os
from pathlib import Path

import pytest
import torch

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
