"""The jaxopt_lite benchmark suite: ``python -m benchmarks --help``.

Modules:

* :mod:`benchmarks.timing` — medians/IQR over interleaved repeats, compile timing, XLA cost analysis;
* :mod:`benchmarks.machine` — what machine and which versions produced the figures;
* :mod:`benchmarks.optimizers` — the optimizer table (discovered from the library at run time);
* :mod:`benchmarks.problems` — test functions, logistic regression data, the digits MLP;
* :mod:`benchmarks.loops` — the jitted ``lax.scan`` training loops every suite shares;
* :mod:`benchmarks.convergence` — toy problems, logistic regression, MLP with vmapped LR sweeps;
* :mod:`benchmarks.roofline` — the measured memory bandwidth (triad kernel);
* :mod:`benchmarks.speed` — update-step time vs Optax / torch.optim, fraction of roofline;
* :mod:`benchmarks.sweep` — a vmapped learning-rate sweep vs a Python loop of jitted runs;
* :mod:`benchmarks.report` — terminal tables, ``results.json`` and ``report.md``;
* :mod:`benchmarks.plots` — the PNG figures.

Nothing here imports JAX at module import time except through the suites, so
``__main__`` can pick the platform (``--device``) before JAX starts.
"""
