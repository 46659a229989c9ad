"""Plug-ins that run the suite's objectives inside the engines people use at scale (docs/scaling.md).

* :mod:`entropy_rl.integrations.trl`  -- a ``trl.GRPOTrainer`` subclass whose loss is a registered objective
  (needs ``trl``; ``make trl-check`` builds ``.venv-trl`` and runs its tests).
* :mod:`entropy_rl.integrations.verl` -- the objectives registered with verl's policy-loss and advantage-estimator
  registries (needs ``verl``, in its own environment: ``make verl-check`` builds ``.venv-verl``).

Nothing is imported here: each submodule imports its engine at the top, and the package never imports this one.
"""
