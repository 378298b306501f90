"""Model registry: names and defaults without TensorFlow, exact parameter counts, forward passes,
trainability, weight-decay selection, mixed precision and the ResNet v1.5 / zero-init details."""

from __future__ import annotations

import math
import subprocess
import sys
import time

import numpy as np
import pytest

import imagenet_spark.models as models
from imagenet_spark.models import alexnet as alexnet_module
from imagenet_spark.models.registry import ModelOptionError, UnknownModelError

REAL = ("alexnet", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
TINY = ("alexnet_tiny", "resnet_tiny", "resnet50_tiny")

# torchvision's published counts for 1000 classes (sum of p.numel() over model.parameters()).
PUBLISHED = {
    "alexnet": 61_100_840,
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
}


@pytest.fixture()
def tf():
    """TensorFlow, imported only by the tests that build models; the Keras session is cleared after
    each so that large builds (resnet152, alexnet) do not accumulate in memory."""
    tensorflow = pytest.importorskip("tensorflow")
    yield tensorflow
    tensorflow.keras.backend.clear_session()


# --- registry without TensorFlow ---------------------------------------------------------------


def test_import_does_not_load_tensorflow() -> None:
    code = (
        "import sys, imagenet_spark.models as m; m.info('resnet50'); m.available();\n"
        "try:\n    m.info('nope')\nexcept ValueError:\n    pass\n"
        "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_available_is_sorted_and_complete() -> None:
    names = models.available()
    assert names == tuple(sorted(names))
    assert set(REAL) | set(TINY) <= set(names)


@pytest.mark.parametrize("name", REAL)
def test_real_model_defaults(name: str) -> None:
    info = models.info(name)
    assert info.name == name
    assert (info.image_size, info.eval_resize) == (224, 256)
    assert info.mean == (123.675, 116.28, 103.53)
    assert info.std == (58.395, 57.12, 57.375)
    assert info.params == PUBLISHED[name]
    assert info.description


@pytest.mark.parametrize("name", TINY)
def test_tiny_model_defaults(name: str) -> None:
    info = models.info(name)
    assert (info.image_size, info.eval_resize, info.params) == (32, 36, None)


def test_unknown_model_lists_known_names() -> None:
    with pytest.raises(UnknownModelError) as caught:
        models.info("resnet51")
    message = str(caught.value)
    assert message.startswith("model='resnet51': unknown model; known: ")
    for name in REAL + TINY:
        assert name in message
    assert isinstance(caught.value, ValueError)
    with pytest.raises(UnknownModelError):
        models.build("resnet51", num_classes=10)


@pytest.mark.parametrize(
    ("kwargs", "option"),
    [
        ({"num_classes": 0}, "num_classes"),
        ({"num_classes": 10, "dropout": 1.0}, "dropout"),
        ({"num_classes": 10, "bn_momentum": 1.5}, "bn_momentum"),
        ({"num_classes": 10, "bn_epsilon": 0.0}, "bn_epsilon"),
        ({"num_classes": 10, "image_size": 0}, "image_size"),
    ],
)
def test_bad_options_name_the_option(kwargs: dict, option: str) -> None:
    # Rejected before TensorFlow is needed.
    with pytest.raises(ModelOptionError, match=rf"^{option}="):
        models.build("resnet_tiny", **kwargs)


def test_bad_dtype_policy_lists_choices(tf) -> None:
    before = tf.keras.mixed_precision.global_policy().name
    with pytest.raises(ModelOptionError) as caught:
        models.build("resnet_tiny", num_classes=10, dtype_policy="float64")
    assert "dtype_policy='float64'" in str(caught.value)
    for policy in ("float32", "mixed_float16", "mixed_bfloat16"):
        assert policy in str(caught.value)
    assert tf.keras.mixed_precision.global_policy().name == before


def test_resnet_requires_batch_norm() -> None:
    with pytest.raises(ModelOptionError, match=r"^batch_norm=False"):
        models.build("resnet_tiny", num_classes=10, batch_norm=False)


def test_alexnet_too_small_names_minimum() -> None:
    spec = alexnet_module.SPECS["alexnet"]
    minimum = alexnet_module.min_image_size(spec)
    assert alexnet_module.feature_side(spec, minimum) == 1
    assert alexnet_module.feature_side(spec, minimum - 1) is None
    with pytest.raises(ModelOptionError, match=rf"smallest usable size is {minimum}"):
        models.build("alexnet", num_classes=10, image_size=minimum - 1)


@pytest.mark.parametrize(("side", "grid"), [(6, 6), (12, 6), (13, 6), (7, 6), (3, 6), (4, 6), (15, 3), (1, 3)])
def test_adaptive_pool_plan_is_area_weighted_average(side: int, grid: int) -> None:
    upsample, pool = alexnet_module.adaptive_pool_plan(side, grid)
    assert side * upsample == grid * pool
    values = np.random.default_rng(0).standard_normal(side)
    # What the two Keras layers compute along one axis: nearest upsampling, then average pooling.
    planned = np.repeat(values, upsample).reshape(grid, pool).mean(axis=1)
    # Area-weighted adaptive average: bin i covers [i*side/grid, (i+1)*side/grid) continuously.
    expected = []
    for i in range(grid):
        lo, hi = i * side / grid, (i + 1) * side / grid
        weights = [max(0.0, min(hi, j + 1) - max(lo, j)) for j in range(side)]
        expected.append(np.dot(weights, values) / (hi - lo))
    np.testing.assert_allclose(planned, expected, rtol=1e-12, atol=1e-12)


# --- parameter counts --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "alexnet",
        "resnet18",
        "resnet34",
        "resnet50",
        pytest.param("resnet101", marks=pytest.mark.slow),
        pytest.param("resnet152", marks=pytest.mark.slow),
    ],
)
def test_parameter_count_matches_torchvision(tf, name: str) -> None:
    model = models.build(name, num_classes=1000)
    # Trainable only: Keras BN's moving mean/variance are torchvision buffers, not parameters.
    assert models.count_trainable(model) == PUBLISHED[name]
    assert model.input_shape == (None, 224, 224, 3)
    assert model.output_shape == (None, 1000)


def test_alexnet_geometry_matches_torchvision(tf) -> None:
    model = models.build("alexnet", num_classes=1000)
    assert model.get_layer("conv1").output.shape[1:] == (55, 55, 64)
    assert model.get_layer("pool3").output.shape[1:] == (6, 6, 256)
    assert model.get_layer("flatten").output.shape[1:] == (9216,)
    names = {layer.name for layer in model.layers}
    assert not names & {"grid_upsample", "grid_pool"}  # 6x6 already: torchvision's adaptive pool is a no-op
    assert [model.get_layer(f"dropout{i}").rate for i in (1, 2)] == [0.5, 0.5]


def test_resnet_geometry_matches_torchvision(tf) -> None:
    model = models.build("resnet18", num_classes=1000)
    shapes = {
        "stem_relu": (112, 112, 64),
        "stem_pool": (56, 56, 64),
        "stage1_block2_out": (56, 56, 64),
        "stage2_block1_out": (28, 28, 128),
        "stage3_block1_out": (14, 14, 256),
        "stage4_block2_out": (7, 7, 512),
    }
    for layer, shape in shapes.items():
        assert tuple(model.get_layer(layer).output.shape[1:]) == shape, layer


def test_resnet50_is_v1_5(tf) -> None:
    """Stage 2's first bottleneck strides in its 3x3 conv (v1.5), not in the 1x1s (v1)."""
    model = models.build("resnet50", num_classes=1000)
    block = "stage2_block1"
    assert model.get_layer(f"{block}_conv1").kernel_size == (1, 1)
    assert model.get_layer(f"{block}_conv1").strides == (1, 1)
    assert model.get_layer(f"{block}_conv2").kernel_size == (3, 3)
    assert model.get_layer(f"{block}_conv2").strides == (2, 2)
    assert model.get_layer(f"{block}_conv3").strides == (1, 1)
    assert model.get_layer(f"{block}_proj_conv").strides == (2, 2)
    assert tuple(model.get_layer(f"{block}_out").output.shape[1:]) == (28, 28, 512)
    # Stage 1 keeps the resolution but still projects 64 -> 256 channels.
    assert model.get_layer("stage1_block1_proj_conv").strides == (1, 1)


# --- tiny variants: forward, training, options -------------------------------------------------


@pytest.mark.parametrize("name", TINY)
def test_tiny_forward_gives_float32_logits(tf, name: str) -> None:
    model = models.build(name, num_classes=7)
    batch = np.random.default_rng(0).standard_normal((2, 32, 32, 3)).astype("float32")
    logits = model(batch, training=False)
    assert logits.shape == (2, 7)
    assert logits.dtype == tf.float32
    assert np.all(np.isfinite(logits.numpy()))
    params = models.count_trainable(model)
    assert 1_000 <= params <= 200_000, params


@pytest.mark.parametrize("image_size", [24, 48, 64])
def test_alexnet_tiny_other_sizes_keep_the_classifier(tf, image_size: int) -> None:
    reference = models.count_trainable(models.build("alexnet_tiny", num_classes=5))
    model = models.build("alexnet_tiny", num_classes=5, image_size=image_size)
    assert models.count_trainable(model) == reference
    assert model.get_layer("flatten").output.shape[1:] == (3 * 3 * 32,)
    batch = np.zeros((2, image_size, image_size, 3), dtype="float32")
    assert model(batch).shape == (2, 5)


# Learning rates: AlexNet has no BN and diverges at ResNet rates (as on ImageNet: 0.01 vs 0.1).
OVERFIT_LR = {"alexnet_tiny": 0.005, "resnet_tiny": 0.05, "resnet50_tiny": 0.05}


@pytest.mark.parametrize("name", TINY)
def test_tiny_variant_memorises_random_labels(tf, name: str) -> None:
    """Capacity + gradient flow check: 200 full-batch SGD steps fit 16 noise images to random labels."""
    tf.keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    images = rng.standard_normal((16, 32, 32, 3)).astype("float32")
    labels = rng.integers(0, 10, 16)
    started = time.monotonic()
    model = models.build(name, num_classes=10, dropout=0.0)
    model.compile(
        optimizer=tf.keras.optimizers.SGD(OVERFIT_LR[name], momentum=0.9),
        loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    data = tf.data.Dataset.from_tensors((images, labels)).repeat()
    history = model.fit(data, steps_per_epoch=50, epochs=4, verbose=0)
    assert history.history["accuracy"][-1] == 1.0  # every one of the last 50 steps
    assert history.history["loss"][-1] < 0.05
    # Inference mode too: BN moving statistics (momentum 0.9) have caught up.
    predicted = model.predict(images, verbose=0).argmax(axis=1)
    assert (predicted == labels).all()
    assert time.monotonic() - started < 60  # ~3-5 s on 2 CPU cores


def _is_kernel(variable) -> bool:
    return variable.name.split("/")[-1].startswith("kernel")


@pytest.mark.parametrize("name", ["resnet_tiny", "resnet50_tiny", "alexnet_tiny"])
@pytest.mark.parametrize("batch_norm", [None, True])
def test_decay_variables_are_conv_and_dense_kernels_only(tf, name: str, batch_norm: bool | None) -> None:
    if name.startswith("resnet") and batch_norm is None:
        batch_norm = True  # ResNet has BN either way; the None case is AlexNet's bias-only default
    model = models.build(name, num_classes=10, batch_norm=batch_norm)
    decayed = models.decay_variables(model)
    convs = [layer for layer in model.layers if isinstance(layer, tf.keras.layers.Conv2D)]
    denses = [layer for layer in model.layers if isinstance(layer, tf.keras.layers.Dense)]
    bns = [layer for layer in model.layers if isinstance(layer, tf.keras.layers.BatchNormalization)]
    assert len(decayed) == len(convs) + len(denses)
    assert {id(v) for v in decayed} == {id(layer.kernel) for layer in convs + denses}
    assert all(_is_kernel(v) for v in decayed)
    excluded = [v for v in model.trainable_variables if id(v) not in {id(d) for d in decayed}]
    # Everything left out is a BN gamma/beta or a bias: two per BN layer plus one per biased layer.
    biased = [layer for layer in convs + denses if layer.use_bias]
    assert len(excluded) == 2 * len(bns) + len(biased)
    assert all(v.name.split("/")[-1].split(":")[0] in ("gamma", "beta", "bias") for v in excluded)
    if name.startswith("resnet"):
        assert len(biased) == 1  # only the logits layer; convs are bias-free in front of BN
    elif batch_norm:
        assert len(bns) == 5 and len(biased) == 3  # BN replaces the conv biases
    else:
        assert not bns and len(biased) == 8


def test_alexnet_batch_norm_swaps_conv_bias_for_bn(tf) -> None:
    plain = models.count_trainable(models.build("alexnet_tiny", num_classes=10))
    with_bn = models.count_trainable(models.build("alexnet_tiny", num_classes=10, batch_norm=True))
    channels = sum(row.filters for row in alexnet_module.SPECS["alexnet_tiny"].convs)
    assert with_bn - plain == 2 * channels - channels  # + gamma, beta; - bias


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_build_gives_float32_logits_and_restores_policy(tf, policy: str) -> None:
    before = tf.keras.mixed_precision.global_policy().name
    model = models.build("resnet_tiny", num_classes=10, dtype_policy=policy)
    assert tf.keras.mixed_precision.global_policy().name == before
    assert model.get_layer("stem_conv").compute_dtype == policy.split("_")[1]
    assert model.get_layer("stem_conv").variable_dtype == "float32"
    assert model.output.dtype == tf.float32
    logits = model(np.zeros((2, 32, 32, 3), dtype="float32"), training=False)
    assert logits.dtype == tf.float32 and logits.shape == (2, 10)
    # A later default build is plain float32 again.
    plain = models.build("resnet_tiny", num_classes=10)
    assert plain.get_layer("stem_conv").compute_dtype == "float32"


def test_policy_restored_when_build_fails(tf) -> None:
    before = tf.keras.mixed_precision.global_policy().name
    with pytest.raises(ModelOptionError):
        models.build("alexnet_tiny", num_classes=10, image_size=8, dtype_policy="mixed_float16")
    assert tf.keras.mixed_precision.global_policy().name == before


@pytest.mark.parametrize(("name", "last_bn"), [("resnet_tiny", "bn2"), ("resnet50_tiny", "bn3")])
def test_zero_init_residual_zeroes_last_bn_gamma_of_each_block(tf, name: str, last_bn: str) -> None:
    model = models.build(name, num_classes=10)
    bns = [layer for layer in model.layers if isinstance(layer, tf.keras.layers.BatchNormalization)]
    zeroed = {layer.name for layer in bns if not np.any(layer.gamma.numpy())}
    blocks = {layer.name.rsplit("_", 1)[0] for layer in model.layers if layer.name.endswith("_add")}
    assert zeroed == {f"{block}_{last_bn}" for block in blocks}
    assert len(blocks) == 4
    for layer in bns:
        if layer.name not in zeroed:  # stem, inner and projection BNs start at 1
            np.testing.assert_array_equal(layer.gamma.numpy(), 1.0)
        assert layer.momentum == 0.9 and layer.epsilon == 1e-5
    off = models.build(name, num_classes=10, zero_init_residual=False)
    for layer in off.layers:
        if isinstance(layer, tf.keras.layers.BatchNormalization):
            np.testing.assert_array_equal(layer.gamma.numpy(), 1.0)


def test_same_shaped_layers_get_different_initial_weights(tf) -> None:
    """Keras 2 repeats an unseeded initializer's values when one instance is reused; we must not."""
    model = models.build("resnet_tiny", num_classes=10)
    first = model.get_layer("stage1_block1_conv1").kernel.numpy()
    second = model.get_layer("stage1_block1_conv2").kernel.numpy()
    assert first.shape == second.shape
    assert not np.array_equal(first, second)
    std = math.sqrt(2.0 / (3 * 3 * 8))  # He fan_out: 3x3 kernel, 8 output channels
    assert 0.5 * std < first.std() < 1.5 * std
