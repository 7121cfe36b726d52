"""Gradient transformations, one module per family.

- :mod:`~jaxopt_lite.transforms.scaling`: constant and scheduled scaling, sign.
- :mod:`~jaxopt_lite.transforms.clipping`: clipping by value, norm, global norm, AGC.
- :mod:`~jaxopt_lite.transforms.momentum`: heavy-ball / Nesterov traces and EMAs.
- :mod:`~jaxopt_lite.transforms.adaptive`: per-coordinate step sizes (Adam family, RMSProp, AdaGrad, ...).
- :mod:`~jaxopt_lite.transforms.regularization`: weight decay, gradient noise, constraints.
"""
