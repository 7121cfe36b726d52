"""Connectionist temporal classification (CTC) loss."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxopt_lite.losses._common import check_floating, check_rank, check_same_shape, shape_of


def ctc_loss_with_forward_probs(
    logits: jax.typing.ArrayLike,
    logit_paddings: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    label_paddings: jax.typing.ArrayLike,
    *,
    blank_id: int = 0,
    log_epsilon: jax.typing.ArrayLike = -1e5,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    r"""CTC loss and the log forward variables of the CTC lattice.

    The loss is :math:`-\log \sum_{\pi} \prod_t p_t(\pi_t)` over the alignments
    :math:`\pi` that reduce to the label sequence after merging repeats and
    removing blanks. The forward pass keeps two lattices per frame :math:`t`:

    - :math:`\alpha^\phi_t(n)`, ``n = 0..N``: after frame ``t``, ``n`` labels
      emitted and the last frame a blank (or, for ``n = 0``, nothing emitted yet);
    - :math:`\alpha^e_t(n)`, ``n = 0..N-1``: after frame ``t``, on label ``n``.

    Per frame, with blank log-probability :math:`b_t` and label log-probabilities :math:`e_t(n)`:

    .. math::
        \tilde\alpha^\phi(n + 1) &= \alpha^\phi_{t-1}(n + 1) \oplus
            \big(\alpha^e_{t-1}(n) + \epsilon\,[y_n = y_{n+1}]\big) \\
        \alpha^e_t(n) &= \big(\tilde\alpha^\phi(n) \oplus \alpha^e_{t-1}(n)\big) + e_t(n) \\
        \alpha^\phi_t(n + 1) &= \big(\tilde\alpha^\phi(n + 1) + b_t\big) \oplus
            \big(\alpha^e_{t-1}(n) + b_t + \epsilon\,[y_n \ne y_{n+1}]\big)

    (:math:`\oplus` = logaddexp, :math:`\epsilon` = ``log_epsilon`` standing for
    :math:`\log 0`): a label moves to the next label directly unless the two are
    equal, and to a blank always. A padded frame leaves both lattices unchanged.
    After the last frame :math:`\alpha^\phi(n + 1) \mathrel{\oplus}= \alpha^e(n)`,
    and the loss is :math:`-\alpha^\phi(L)` for :math:`L` labels.

    Args:
      logits: ``[B, T, K]`` logits, the blank among the ``K`` classes.
      logit_paddings: ``[B, T]``, 1.0 on padded frames, else 0.0.
      labels: ``[B, N]`` integer labels, right-padded.
      label_paddings: ``[B, N]``, 1.0 on padded labels (a run of 0s then 1s).
      blank_id: the class of the blank.
      log_epsilon: a finite stand-in for :math:`\log 0`.

    Returns:
      ``(loss, logalpha_blank, logalpha_nonblank)``: ``[B]``, ``[T, B, N + 1]``
      and ``[T, B, N]``, in float32 or wider (bfloat16 logits are promoted).

    Reference: Graves et al., `Connectionist temporal classification
    <https://www.cs.toronto.edu/~graves/icml_2006.pdf>`_, ICML 2006.
    """
    owner = "ctc_loss"
    check_floating(owner, "logits", logits)
    check_rank(owner, "logits", logits, 3)
    check_rank(owner, "labels", labels, 2)
    check_same_shape(owner, "labels", labels, "label_paddings", label_paddings)
    if shape_of(logit_paddings) != shape_of(logits)[:2]:
        raise ValueError(
            f"{owner}: logit_paddings must have shape [B, T] = {shape_of(logits)[:2]}, got {shape_of(logit_paddings)}"
        )
    batch_size, _, num_classes = shape_of(logits)
    if shape_of(labels)[0] != batch_size:
        raise ValueError(f"{owner}: labels have batch size {shape_of(labels)[0]}, logits {batch_size}")
    logits = jnp.asarray(logits)
    dtype = jnp.promote_types(logits.dtype, jnp.float32)
    labels = jnp.asarray(labels)
    label_paddings = jnp.asarray(label_paddings)
    max_label_length = labels.shape[1]
    log_epsilon = jnp.asarray(log_epsilon, dtype)

    log_probs = jax.nn.log_softmax(logits.astype(dtype), axis=-1)
    label_lengths = max_label_length - jnp.sum(label_paddings, axis=1).astype(jnp.int32)
    repeat = jnp.pad((labels[:, :-1] == labels[:, 1:]).astype(dtype), ((0, 0), (0, 1)))  # [B, N]

    log_blank = jnp.transpose(log_probs[:, :, blank_id])[:, :, None]  # [T, B, 1]
    in_range = (labels >= 0) & (labels < num_classes)  # padding may hold any value: it emits log-prob 0
    gather_index = jnp.broadcast_to(jnp.clip(labels, 0, num_classes - 1)[:, None, :], log_probs.shape[:2] + labels.shape[1:])
    log_emit = jnp.where(in_range[:, None, :], jnp.take_along_axis(log_probs, gather_index, axis=2), 0)
    log_emit = jnp.transpose(log_emit, (1, 0, 2))  # [T, B, N]
    frame_padding = jnp.transpose(jnp.asarray(logit_paddings))[:, :, None]  # [T, B, 1]

    def add_from_labels(phi, from_labels):
        """phi[:, n + 1] ⊕= from_labels[:, n]; phi[:, 0] is unchanged."""
        return jnp.concatenate([phi[:, :1], jnp.logaddexp(phi[:, 1:], from_labels)], axis=1)

    def step(carry, frame):
        phi, emit = carry
        frame_emit, frame_blank, padded = frame
        phi_skip = add_from_labels(phi, emit + log_epsilon * repeat)
        next_emit = jnp.logaddexp(phi_skip[:, :-1], emit) + frame_emit
        next_phi = add_from_labels(phi_skip + frame_blank, emit + frame_blank + log_epsilon * (1 - repeat))
        next_phi = jnp.where(padded > 0, phi, next_phi)
        next_emit = jnp.where(padded > 0, emit, next_emit)
        return (next_phi, next_emit), (next_phi, next_emit)

    phi_init = jnp.full((batch_size, max_label_length + 1), log_epsilon, dtype).at[:, 0].set(0)
    emit_init = jnp.full((batch_size, max_label_length), log_epsilon, dtype)
    _, (logalpha_phi, logalpha_emit) = jax.lax.scan(
        step, (phi_init, emit_init), (log_emit, log_blank, frame_padding.astype(dtype))
    )
    final_phi = add_from_labels(logalpha_phi[-1], logalpha_emit[-1])
    logalpha_phi = logalpha_phi.at[-1].set(final_phi)
    loss = -jnp.take_along_axis(final_phi, label_lengths[:, None], axis=1)[:, 0]
    return loss, logalpha_phi, logalpha_emit


def ctc_loss(
    logits: jax.typing.ArrayLike,
    logit_paddings: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    label_paddings: jax.typing.ArrayLike,
    *,
    blank_id: int = 0,
    log_epsilon: jax.typing.ArrayLike = -1e5,
) -> jax.Array:
    """CTC loss per sequence, ``[B]``; see :func:`ctc_loss_with_forward_probs` for the recursion and arguments."""
    loss, _, _ = ctc_loss_with_forward_probs(
        logits, logit_paddings, labels, label_paddings, blank_id=blank_id, log_epsilon=log_epsilon
    )
    return loss
