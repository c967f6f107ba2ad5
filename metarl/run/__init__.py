"""The run layer: from a config to a finished run directory.

- :mod:`~metarl.run.factory`: config -> components (sampler, policy, outer update) and the
  per-purpose random streams; the held-out test tasks.
- :mod:`~metarl.run.rundir`: the run directory: atomic creation, config, metrics, checkpoints.
- :mod:`~metarl.run.iteration`: one meta-iteration (sample, adapt, sample, outer update).
- :mod:`~metarl.run.loop`: the iterations and the signals, nothing else.
- :mod:`~metarl.run.hooks`: what happens around them (metrics, checkpoints, wandb, plots,
  evaluation, videos).
- :mod:`~metarl.run.evaluation`: the end-of-run evaluation and ``metarl evaluate``.

``metarl.train`` composes them; ``evaluate``, ``render``, ``bench`` and the baselines use the
factory and the run directory, never the loop. Nothing here is imported by this package's
``__init__``, so importing one module never pulls in the others.
"""
