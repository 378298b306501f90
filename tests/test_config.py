"""Typed config: presets derive, overrides win, bad values fail before any work with setting/value/fix."""

from __future__ import annotations

import argparse
import subprocess
import sys
import typing
import warnings
from pathlib import Path

import pytest

from imagenet_spark.config import (
    Backend,
    ConfigError,
    Export,
    FlatSettingWarning,
    Metric,
    PartitionConfig,
    ShardBy,
    canonical_key,
    changed_settings,
    from_dict,
    merge_settings,
    parse_overrides,
    read_preset,
    resolve,
    resumable_settings,
    to_dict,
    with_settings,
)
from imagenet_spark.data.schema import DatasetError
from imagenet_spark.train_config import Output, TrainConfig

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
    preset = REPO / "conf/train/small_images.yaml"
    cfg = resolve(TrainConfig, preset=preset, explicit={"data": "/ds", "model_dir": "/m"})
    cfg.validate()
    assert (cfg.model, cfg.input.augment, cfg.input.flip_prob, cfg.recipe.warmup_epochs) == ("resnet18", "light", 0.0,
                                                                                               1.0)  # its own
    assert (cfg.recipe.schedule, cfg.recipe.momentum, cfg.recipe.bn_momentum) == ("cosine", 0.9, 0.9)  # its base's
    assert "base: resnet18_imagenet.yaml" in preset.read_text()
    header = [line for line in preset.read_text().splitlines() if line.startswith("#")]
    assert any("jobs/train_barrier.py --config conf/train/small_images.yaml" in line for line in header)


@pytest.mark.parametrize("overrides,match", [
    (["qualty=80"], r"qualty=80: unknown setting\. Fix: did you mean quality\? valid settings here are: .*quality"),
    (["quality=abc"], r"quality='abc': expected an integer"),
    (["quality=0"], r"quality=0: JPEG quality must be between 1 and 100"),
    (["overwrite=maybe"], r"overwrite='maybe': expected true or false"),
    (["layout=zip"], r"layout='zip': must be one of auto, ilsvrc, tar, kaggle, folders, csv\."),
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


# --------------------------------------------------------------------------------------------------
# TrainConfig's sections: dotted keys, old flat names, resumable marks, Literal choices


def _train(**explicit: object) -> TrainConfig:
    return resolve(TrainConfig, explicit={"data": "/d", "model_dir": "/m", "model": "resnet_tiny", **explicit})


def test_dotted_keys_reach_their_section_from_set_flags_and_presets(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("base: " + str(REPO / "conf/train/resnet18_smoke.yaml") + "\nrecipe:\n  momentum: 0.8\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error", FlatSettingWarning)  # none of this is the old spelling
        cfg = resolve(TrainConfig, preset=preset, overrides=["recipe.base_lr=0.2", "input.shard_by=synset"],
                      explicit={"data": "/d", "model_dir": "/m", "launch.max_retries": 5})
    assert (cfg.recipe.base_lr, cfg.recipe.momentum, cfg.recipe.warmup_epochs) == (0.2, 0.8, 1.0)
    assert (cfg.input.shard_by, cfg.launch.max_retries, cfg.model) == ("synset", 5, "resnet_tiny")
    assert from_dict(TrainConfig, to_dict(cfg)) == cfg
    assert to_dict(cfg)["recipe"]["base_lr"] == 0.2 and "base_lr" not in to_dict(cfg)


def test_old_flat_names_still_work_with_one_warning_naming_the_new_keys(tmp_path):
    preset = tmp_path / "old.yaml"
    preset.write_text("model: resnet_tiny\nweight_decay: 0.0005\n")  # a user's preset from before the sections
    with pytest.warns(FlatSettingWarning) as caught:
        cfg = resolve(TrainConfig, preset=preset, overrides=["base_lr=0.2", "seed=3"],
                      explicit={"data": "/d", "model_dir": "/m", "fail_at_step": 4})
    assert (cfg.recipe.base_lr, cfg.recipe.weight_decay, cfg.input.seed, cfg.faults.fail_at_step) == \
        (0.2, 0.0005, 3, 4)
    assert len(caught) == 1
    message = str(caught[0].message)
    for old, new in (("weight_decay", "recipe.weight_decay"), ("base_lr", "recipe.base_lr"), ("seed", "input.seed"),
                     ("fail_at_step", "faults.fail_at_step")):
        assert f"{old} -> {new}" in message
    assert "--set recipe.weight_decay=" in message


def test_a_flat_name_given_after_its_dotted_key_wins_as_any_later_layer_does():
    with pytest.warns(FlatSettingWarning):
        cfg = resolve(TrainConfig, overrides=["recipe.base_lr=0.3"], explicit={"data": "/d", "model_dir": "/m",
                                                                               "base_lr": 0.5})
    assert cfg.recipe.base_lr == 0.5


@pytest.mark.parametrize("overrides,match", [
    (["base_lrr=0.2"], r"base_lrr=0.2: unknown setting\. Fix: did you mean recipe.base_lr\?"),
    (["recipe.base_lrr=0.2"], r"recipe.base_lrr=0.2: unknown setting\. Fix: did you mean recipe.base_lr\? "
                              r"valid settings here are: .*base_lr"),
    (["recipe.seed=1"], r"recipe.seed=1: unknown setting"),
    (["recipe.schedule=linear"], r"recipe.schedule='linear': must be one of cosine, step, constant\."),
    (["backend=tpu"], r"backend='tpu': must be one of off, mirrored, mwms, horovod\."),
    (["recipe.base_lr=0"], r"recipe.base_lr=0.0: must be positive"),
    (["input.flip_prob=2"], r"input.flip_prob=2.0: must be a probability"),
    (["faults.fail_rank=3"], r"faults.fail_rank=3: there are only 1 workers"),
])
def test_bad_train_settings_name_the_dotted_key(overrides, match):
    with pytest.raises(ConfigError, match=match):
        resolve(TrainConfig, overrides=overrides, explicit={"data": "/d", "model_dir": "/m", "model": "resnet_tiny"})


def test_configs_built_without_resolve_are_checked_against_their_literals_too():
    with pytest.raises(ConfigError, match=r"output.best_metric='val_top3': must be one of val_top1"):
        TrainConfig(data="/d", model_dir="/m", model="resnet_tiny",
                    output=Output(best_metric="val_top3")).validate()  # type: ignore[arg-type]


def test_with_settings_changes_a_section_field_and_refuses_unknown_keys():
    cfg = _train()
    paused = with_settings(cfg, {"output.stop_at_epoch": 3, "epochs": 4})
    assert (paused.output.stop_at_epoch, paused.epochs, paused.output.export) == (3, 4, "last")
    assert cfg.output.stop_at_epoch is None, "frozen: the original is unchanged"
    with pytest.raises(ConfigError, match=r"output.stop_at_epok.*did you mean output.stop_at_epoch"):
        with_settings(cfg, {"output.stop_at_epok": 3})


def test_resumable_marks_are_read_from_the_fields():
    resumable = resumable_settings(TrainConfig)
    assert {"epochs", "overwrite", "launch.max_retries", "loop.checkpoint_every_steps", "input.reader_workers",
            "faults.fail_at_step", "output.stop_at_epoch", "tracking.track"} <= resumable
    assert not resumable & {"recipe.base_lr", "input.seed", "input.shard_by", "model", "global_batch_size",
                            "output.export", "input.train_reader", "recipe.horovod_fp16_allreduce"}
    assert len(resumable) == 23  # the hand-made list planning.py had before the marks, + launch.standby_workers


def test_a_resumable_change_is_accepted_and_another_refused():
    run = _train(epochs=3)
    previous = to_dict(run)
    assert changed_settings(TrainConfig, previous, with_settings(run, {"epochs": 6, "launch.max_retries": 0,
                                                                        "loop.keep_checkpoints": 1})) == []
    changed = changed_settings(TrainConfig, previous, with_settings(run, {"recipe.base_lr": 0.2, "input.seed": 7}))
    assert changed == [("input.seed", 0, 7), ("recipe.base_lr", 0.1, 0.2)]


def test_an_old_flat_config_json_resumes(tmp_path):
    """A model dir written before the sections holds a flat config.json (written by hand here, as the trainer
    wrote it): the same settings resume, a changed recipe is refused naming the dotted key."""
    import json

    from imagenet_spark.train.planning import prepare_model_dir

    data = tmp_path / "ds"
    data.mkdir()
    (data / "labels.txt").write_text("a\nb\n")
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    flat = {"data": str(data), "model_dir": str(model_dir), "model": "resnet_tiny", "image_size": None,
            "workers": 1, "backend": "mwms", "epochs": 3.0, "global_batch_size": 256, "shard_by": "row_group",
            "base_lr": 0.4, "momentum": 0.9, "step_epochs": [30.0, 60.0, 80.0], "seed": 1, "max_retries": 2,
            "export": "last", "track": True, "overwrite": False}
    (model_dir / "config.json").write_text(json.dumps(flat))
    cfg = _train(data=str(data), model_dir=str(model_dir), epochs=5,
                 **{"recipe.base_lr": 0.4, "input.seed": 1, "launch.max_retries": 0})
    assert prepare_model_dir(cfg) == "resume"
    assert json.loads((model_dir / "config.json").read_text())["recipe"]["base_lr"] == 0.4, "rewritten nested"
    (model_dir / "config.json").write_text(json.dumps(flat))
    with pytest.raises(DatasetError, match=r"holds a run with recipe.base_lr=0.4, not 0.2"):
        prepare_model_dir(with_settings(cfg, {"recipe.base_lr": 0.2}))


def test_cli_choices_come_from_the_literals():
    from imagenet_spark.cli import train_parser, tune_parser

    def choices(parser: argparse.ArgumentParser, flag: str) -> tuple[str, ...]:
        return tuple(next(a for a in parser._actions if flag in a.option_strings).choices)

    assert choices(train_parser(), "--backend") == typing.get_args(Backend)
    assert choices(train_parser(), "--shard-by") == typing.get_args(ShardBy)
    assert choices(train_parser(), "--export") == typing.get_args(Export)
    assert choices(tune_parser(), "--metric") == typing.get_args(Metric)
    args = train_parser().parse_args(["--data", "/d", "--model-dir", "/m", "--model", "resnet_tiny", "--shard-by",
                                      "synset", "--export", "best", "--max-retries", "0", "--fail-at-step", "2"])
    from imagenet_spark.cli import _TRAIN_FLAGS, _explicit

    cfg = resolve(TrainConfig, explicit=_explicit(args, _TRAIN_FLAGS))
    assert (cfg.input.shard_by, cfg.output.export, cfg.launch.max_retries, cfg.faults.fail_at_step) == \
        ("synset", "best", 0, 2)


def test_every_train_and_tune_preset_is_nested_and_resolves_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error", FlatSettingWarning)
        for preset in sorted((REPO / "conf/train").glob("*.yaml")):
            resolve(TrainConfig, preset=preset, explicit={"data": "/d", "model_dir": "/m"})
        for preset in sorted((REPO / "conf/tune").glob("*.yaml")):
            tune = read_preset(preset)
            trial = merge_settings(TrainConfig, read_preset(preset.parent / tune["train_preset"]), tune["train"],
                                   *tune.get("enqueue", []), {"data": "/d", "model_dir": "/m"})
            resolve(TrainConfig, explicit=trial)
            assert {canonical_key(TrainConfig, k, setting="space") for k in tune["space"]} == set(tune["space"])
