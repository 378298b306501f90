"""The training and evaluation steps the jobs run: ``n`` steps inside one ``tf.function``.

Why a module of its own: the step is the one piece of the loop that runs in the graph, and the benchmarks
(``bench/train_step.py``, ``bench/mix_ema.py``, ``bench/horovod_vs_mwms.py``) and ``tests/test_ema.py`` time or
check exactly the step the jobs run, without checkpoints, reporting or a reader. The loop (``train/loop.py``)
wires it; the reader decides what ``(images, labels[, weights])`` the iterators yield.

Labels are one-hot or soft rows (mixup/cutmix, data/mix.py): the loss is the crossentropy against them and
top-1/top-5 count the dominant label (their argmax). TensorFlow is imported inside the functions (worker side).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from imagenet_spark.data.augment import normalize
from imagenet_spark.train.ema import WeightAverage
from imagenet_spark.train_config import TrainConfig

StepFn = Callable[..., Any]


def make_step_functions(cfg: TrainConfig, backend: Any, model: Any, optimizer: Any, sums: dict[str, Any], *,
                        num_classes: int, mean: Sequence[float], std: Sequence[float],
                        average: WeightAverage | None = None) -> tuple[Any, Any]:
    """``train_steps(iterator, n)`` and ``eval_steps(iterator, n)``: n steps inside one ``tf.function``.

    Images arrive as the streams emit them, uint8 (or float32 in 0..255 units after mixup/cutmix), and each step
    normalises them with the model's ``mean``/``std`` (``augment.normalize``) before the model: on an
    accelerator that is free, and the input pipeline neither casts nor moves float pixels (issue #13).

    ``sums``: the ``tf.keras.metrics.Sum`` the steps add to (``loss``, ``top1``, ``top5``, ``count``, the
    ``val_*`` ones and, when present, ``nonfinite``). ``average``: the EMA of the weights, updated after every
    optimizer step on every replica.
    """
    import tensorflow as tf

    def normalise(images: Any) -> Any:
        return normalize(images, mean, std)

    # Not converted by autograph (issue #13, goal 3): the steps branch on settings only, never on a tensor, and
    # converting them, the model's calls and the loop cost each worker ~0.4 s before its first step.
    plain = tf.autograph.experimental.do_not_convert
    train_step = plain(_make_train_step(cfg, backend, model, optimizer, sums, num_classes=num_classes,
                                        average=average, normalise=normalise))
    eval_step = plain(_make_eval_step(model, sums, num_classes=num_classes, normalise=normalise))

    def steps(step: StepFn) -> Any:
        def n_steps(iterator: Any, n: Any) -> None:
            def body(i: Any) -> Any:
                backend.run(step, next(iterator))
                return i + 1

            tf.while_loop(lambda i: i < n, body, [tf.constant(0, n.dtype)])

        return tf.function(n_steps, autograph=False)

    return steps(train_step), steps(eval_step)


def per_example_loss(labels: Any, logits: Any, label_smoothing: float) -> Any:
    """Crossentropy of each example against its (one-hot or soft) label row."""
    import tensorflow as tf

    return tf.keras.losses.categorical_crossentropy(labels, logits, from_logits=True, label_smoothing=label_smoothing)


def correct(labels: Any, logits: Any, k: int) -> Any:
    """1.0 where the dominant label is among the top ``k`` logits."""
    import tensorflow as tf

    return tf.cast(tf.math.in_top_k(tf.argmax(labels, -1), logits, k), tf.float32)


def _make_forward_backward(cfg: TrainConfig, backend: Any, model: Any, optimizer: Any, normalise: StepFn) -> StepFn:
    """Local gradients of this replica's share of the global-batch loss (XLA-compilable: no collectives).

    L2 goes on conv/dense kernels only (not BN, not biases), each replica adding its 1/R share (coupled decay,
    added to the loss)."""
    import tensorflow as tf

    from imagenet_spark.models import decay_variables

    decay = decay_variables(model)
    smoothing = cfg.recipe.label_smoothing
    loss_batch = backend.loss_batch(cfg.global_batch_size)

    def forward_backward(images: Any, labels: Any) -> tuple[Any, Any, Any]:
        with tf.GradientTape() as tape:
            logits = tf.cast(model(normalise(images), training=True), tf.float32)  # fused by XLA when on
            per_example = per_example_loss(labels, logits, smoothing)
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=loss_batch)
            if cfg.recipe.weight_decay and decay:
                l2 = cfg.recipe.weight_decay * tf.add_n([tf.nn.l2_loss(tf.cast(v, tf.float32)) for v in decay])
                loss += l2 / backend.replicas_summing_gradients
            scaled = optimizer.get_scaled_loss(loss) if cfg.recipe.precision == "mixed_float16" else loss
        grads = tape.gradient(scaled, model.trainable_variables)
        if cfg.recipe.precision == "mixed_float16":
            grads = optimizer.get_unscaled_gradients(grads)
        return grads, per_example, logits

    return tf.function(forward_backward, jit_compile=True) if cfg.recipe.xla else forward_backward


def _make_nonfinite_counter(cfg: TrainConfig, sums: dict[str, Any]) -> Callable[[Any, Any], None]:
    """Steps with a non-finite loss or gradient norm, summed in-graph: read only where the loop already syncs
    with the host (no extra sync per step).

    The loss-scale optimizer of mixed_float16 meets inf gradients on purpose (it skips that step and lowers the
    scale), so there only the loss counts as divergence."""
    import tensorflow as tf

    check_gradients = cfg.recipe.precision != "mixed_float16"

    def count_nonfinite(per_example: Any, grads: Any) -> None:
        bad = tf.logical_not(tf.math.is_finite(tf.reduce_sum(per_example)))
        if check_gradients:
            bad = tf.logical_or(bad, tf.logical_not(tf.math.is_finite(tf.linalg.global_norm(grads))))
        sums["nonfinite"].update_state(tf.cast(bad, tf.float32))

    return count_nonfinite


def _make_train_step(cfg: TrainConfig, backend: Any, model: Any, optimizer: Any, sums: dict[str, Any], *,
                     num_classes: int, average: WeightAverage | None, normalise: StepFn) -> StepFn:
    """One replica's optimizer step: gradients, their reduction, the update, the EMA and the training sums."""
    import tensorflow as tf

    top_k = min(5, num_classes)
    forward_backward = _make_forward_backward(cfg, backend, model, optimizer, normalise)
    count_nonfinite = _make_nonfinite_counter(cfg, sums)

    def train_step(images: Any, labels: Any) -> None:
        grads, per_example, logits = forward_backward(images, labels)
        grads = backend.reduce_gradients(grads)
        if "nonfinite" in sums:  # the benchmarks build their own sums without it
            count_nonfinite(per_example, grads)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        if average is not None:  # after the (allreduced) update: the same weights on every replica
            average.update()
        sums["loss"].update_state(tf.reduce_sum(per_example))
        sums["top1"].update_state(tf.reduce_sum(correct(labels, logits, 1)))
        sums["top5"].update_state(tf.reduce_sum(correct(labels, logits, top_k)))
        sums["count"].update_state(tf.cast(tf.shape(labels)[0], tf.float32))

    return train_step


def _make_eval_step(model: Any, sums: dict[str, Any], *, num_classes: int, normalise: StepFn) -> StepFn:
    """One replica's evaluation step: weighted sums (padding rows weigh 0), so every image counts exactly once."""
    import tensorflow as tf

    top_k = min(5, num_classes)

    def eval_step(images: Any, labels: Any, weights: Any) -> None:
        logits = tf.cast(model(normalise(images), training=False), tf.float32)
        sums["val_loss"].update_state(tf.reduce_sum(per_example_loss(labels, logits, 0.0) * weights))
        sums["val_top1"].update_state(tf.reduce_sum(correct(labels, logits, 1) * weights))
        sums["val_top5"].update_state(tf.reduce_sum(correct(labels, logits, top_k) * weights))
        sums["val_count"].update_state(tf.reduce_sum(weights))

    return eval_step
