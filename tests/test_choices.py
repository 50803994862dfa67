"""Choices are StrEnums in the schema (issue 21): each allowed value written once, a member compares and
prints as its string, a bad value is one line naming the key, the allowed values and what was found, and
config.yaml keeps plain strings (an older run's config.yaml still resumes)."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest
from omegaconf import OmegaConf

from helpers import compose_config
from stgnn_launch.config.load import check_choices, load_run_config, save_run_config, to_config, with_overrides
from stgnn_launch.config.resume import check_resume
from stgnn_launch.config.schema import BatchingMode, choice_keys
from stgnn_launch.errors import UserError


def test_every_choice_key_takes_each_of_its_values_as_a_plain_string():
    keys = choice_keys()
    assert set(keys) == {"dataset.axis_order", "dataset.covariates", "dataset.split", "batching.mode",
                         "batching.device", "batching.dtype", "batching.shard", "trainer.lr_scaling",
                         "launcher.name", "launcher.backend", "model.base"}
    base = to_config({})
    for key, kind in keys.items():
        for value in kind:
            if key == "launcher.name" and value == "slurm":
                continue  # its own checks (a Slurm cluster) are test_slurm_*'s
            cfg = with_overrides(base, [f"{key}={value}"])
            group, name = key.split(".")
            got = getattr(getattr(cfg, group), name)
            assert got == str(value) and f"{got}" == str(value) and isinstance(got, kind)
    assert json.dumps(asdict(base)["batching"]["mode"]) == '"index"'


@pytest.mark.parametrize("key, bad, allowed", [
    ("batching.mode", "fast", "standard, index, dist_index"),
    ("batching.dtype", "float64", "float32, bfloat16, float16"),
    ("dataset.axis_order", "tn", "TN, NT, TNF, NTF, NFT, TFN"),
    ("trainer.lr_scaling", "cube", "none, linear, sqrt"),
])
def test_a_bad_choice_is_one_line_naming_key_allowed_and_found(key, bad, allowed):
    expected = f"{key}: expected one of {allowed}, found '{bad}'"
    group, name = key.split(".")
    with pytest.raises(UserError) as composed:  # OmegaConf's ValidationError, translated in to_config
        to_config(OmegaConf.create({group: {name: bad}}))
    with pytest.raises(UserError) as command_line:  # before Hydra composes (a sweep's values each)
        check_choices(["trainer.max_epochs=2", f"{key}={str(next(iter(choice_keys()[key])))},{bad}"])
    with pytest.raises(UserError) as helper:
        compose_config(f"{key}={bad}")
    assert str(composed.value) == str(command_line.value) == str(helper.value) == expected


def test_config_yaml_keeps_plain_strings_and_an_older_one_resumes(tmp_path):
    cfg = compose_config("batching=standard", "dataset.covariates=none", "trainer.resume=true")
    save_run_config(cfg, tmp_path)
    text = (tmp_path / "config.yaml").read_text()
    assert "mode: standard\n" in text and "covariates: none\n" in text and "Mode" not in text and "!!" not in text
    assert load_run_config(tmp_path) == cfg and load_run_config(tmp_path).batching.mode is BatchingMode.standard
    check_resume(cfg, tmp_path)  # the run's own config: nothing changed
    # a config.yaml written before the enums (plain strings, the same values) resumes as well
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(json.loads(json.dumps(asdict(cfg))))))
    check_resume(cfg, tmp_path)
    with pytest.raises(UserError, match=r"batching\.mode \('standard' -> 'index'\)"):
        check_resume(with_overrides(cfg, ["batching.mode=index"]), tmp_path)
