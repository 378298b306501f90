"""Typed config: presets derive, overrides win, bad values fail before any work with setting/value/fix."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from imagenet_spark.config import ConfigError, PartitionConfig, from_dict, parse_overrides, resolve, to_dict

REPO = Path(__file__).resolve().parents[1]


def test_precedence_defaults_preset_overrides_flags():
    cfg = resolve(PartitionConfig, preset=REPO / "conf/partition/smoke.yaml",
                  overrides=["quality=80", "resize_short=none"], explicit={"input": "/in", "output": "/out",
                                                                           "quality": 70})
    assert cfg.images_per_task == 16  # smoke.yaml
    assert cfg.max_reject_fraction == 0.05  # smoke.yaml overrides its base
    assert cfg.rows_per_row_group == 8
    assert cfg.quality == 70  # explicit flag beats --set
    assert cfg.resize_short is None
    assert from_dict(PartitionConfig, to_dict(cfg)) == cfg


def test_every_preset_resolves():
    for preset in sorted((REPO / "conf/partition").glob("*.yaml")):
        cfg = resolve(PartitionConfig, preset=preset, explicit={"input": "/in", "output": "/out"})
        assert cfg.quality == 90, preset
        header = preset.read_text().splitlines()[:4]
        assert any("jobs/partition.py" in line for line in header), f"{preset} header shows the command"


def test_small_images_preset_resolves_through_its_base_chain():
    from imagenet_spark.config import TrainConfig

    preset = REPO / "conf/train/small_images.yaml"
    cfg = resolve(TrainConfig, preset=preset, explicit={"data": "/ds", "model_dir": "/m"})
    cfg.validate()
    assert (cfg.model, cfg.augment, cfg.flip_prob, cfg.warmup_epochs) == ("resnet18", "light", 0.0, 1.0)  # its own
    assert (cfg.schedule, cfg.momentum, cfg.bn_momentum) == ("cosine", 0.9, 0.9)  # from resnet50_imagenet.yaml
    assert "base: resnet18_imagenet.yaml" in preset.read_text()
    header = [line for line in preset.read_text().splitlines() if line.startswith("#")]
    assert any("jobs/train_barrier.py --config conf/train/small_images.yaml" in line for line in header)


@pytest.mark.parametrize("overrides,match", [
    (["qualty=80"], r"qualty=80: unknown setting\. Fix: valid settings here are: .*quality"),
    (["quality=abc"], r"quality='abc': expected an integer"),
    (["quality=0"], r"quality=0: JPEG quality must be between 1 and 100"),
    (["overwrite=maybe"], r"overwrite='maybe': expected true or false"),
    (["layout=zip"], r"layout='zip': unknown layout; known: auto, ilsvrc"),
    (["rows_per_row_group=999"], r"rows_per_row_group=999: must be between 1 and images_per_task \(256\)"),
    (["resume=true", "overwrite=true"], r"resume=True: --resume and --overwrite contradict"),
    (["quality"], r"--set='quality': expected key=value"),
])
def test_bad_values_name_the_setting_and_the_fix(overrides, match):
    with pytest.raises(ConfigError, match=match):
        resolve(PartitionConfig, overrides=overrides, explicit={"input": "/in", "output": "/out"})


def test_missing_input_and_missing_preset():
    with pytest.raises(ConfigError, match=r"input='': no input given\. Fix: pass --input"):
        resolve(PartitionConfig, explicit={"output": "/out"})
    with pytest.raises(ConfigError, match=r"--config='nope.yaml': no such preset file"):
        resolve(PartitionConfig, preset="nope.yaml")


def test_dotted_overrides_nest():
    assert parse_overrides(["a.b=1", "a.c=x", "d=[1, 2]"]) == {"a": {"b": 1, "c": "x"}, "d": [1, 2]}


def test_cli_fake_data_and_summary_errors(tmp_path):
    out = tmp_path / "raw"
    proc = subprocess.run([sys.executable, "-m", "imagenet_spark", "fake-data", "--output", str(out), "--classes", "3",
                           "--train-per-class", "4", "--val-per-class", "2", "--size", "40x30"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert len(list((out / "train").iterdir())) == 3
    assert len((out / "synset_labels.txt").read_text().split()) == 6
    proc = subprocess.run([sys.executable, "-m", "imagenet_spark", "summary", str(out)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert "no manifest.json: not a finished dataset" in proc.stderr and "Fix: run jobs/partition.py" in proc.stderr


def test_resize_short_none_flag_keeps_originals():
    """``--resize-short none`` must reach the config as None, not vanish as "flag not given" (default 256)."""
    from imagenet_spark.cli import _PARTITION_FLAGS, _explicit, partition_parser

    def resolved(*argv: str) -> PartitionConfig:
        args = partition_parser().parse_args(["--input", "/in", "--output", "/out", *argv])
        return resolve(PartitionConfig, explicit=_explicit(args, _PARTITION_FLAGS))

    assert resolved("--resize-short", "none").resize_short is None
    assert resolved("--resize-short", "128").resize_short == 128
    assert resolved().resize_short == 256
    with pytest.raises(SystemExit):
        partition_parser().parse_args(["--resize-short", "big"])
