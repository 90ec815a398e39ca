import pytest

from cifar_pipeline.config import DEFAULTS, PRESETS, PipelineConfig, validate_config
from cifar_pipeline.errors import ConfigError


def test_seed_preset_is_the_blog_recipe():
    cfg = PipelineConfig(preset="seed").resolved({})
    assert (cfg.model, cfg.lr, cfg.momentum, cfg.batch_size, cfg.epochs) == ("seed_net", 0.01, 0.0, 16, 10)
    assert (cfg.normalize, cfg.flip, cfg.translate, cfg.cutout, cfg.schedule) == ("unit", "none", 0, 0, "constant")
    assert cfg.weight_decay == 0 and cfg.label_smoothing == 0 and not cfg.nesterov and not cfg.ema


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_resolves_to_complete_values(name):
    cfg = PipelineConfig(preset=name).resolved({})
    missing = [k for k, v in cfg.model_dump().items() if v is None and k != "source"]
    assert missing == []
    assert set(PRESETS[name]) - {"description"} <= set(DEFAULTS)


def test_explicit_value_beats_preset_and_environment():
    env = {"CIFAR_PIPELINE_SOURCE": "/env/archive.tar.gz", "CIFAR_PIPELINE_MD5": "a" * 32}
    cfg = PipelineConfig(preset="smoke", epochs=3, source="/mine.tar.gz").resolved(env)
    assert cfg.epochs == 3 and cfg.batch_size == PRESETS["smoke"]["batch_size"]
    assert cfg.source == ["/mine.tar.gz"] and cfg.md5 == DEFAULTS["md5"]
    from_env = PipelineConfig(preset="smoke").resolved(env)
    assert from_env.source == ["/env/archive.tar.gz"] and from_env.md5 == "a" * 32


def test_sources_split_on_commas_and_default_to_official():
    assert PipelineConfig(source="http://a/x.tgz, /b/x.tgz").source == ["http://a/x.tgz", "/b/x.tgz"]
    assert PipelineConfig().resolved({}).sources()[0].startswith("https://www.cs.toronto.edu/")


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"epochs": 0}, "epochs = 0: Input should be greater than 0 (allowed: 0 < epochs <= 1000)"),
        ({"batch_size": -4}, "batch_size = -4: Input should be greater than or equal to 1 (allowed: 1 <= batch_size"),
        ({"lr": 500}, "lr = 500: Input should be less than or equal to 100 (allowed: 0 < lr <= 100)"),
        ({"model": "resnet9000"}, "model = 'resnet9000'"),
        ({"preset": "turbo"}, "allowed: one of seed, smoke, cpu, fast"),
        ({"md5": "not-a-digest"}, "md5 = 'not-a-digest'"),
        ({"momentum": 0, "nesterov": True}, "nesterov needs momentum > 0"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_invalid_values_name_the_field_and_range(values, expected):
    with pytest.raises(ConfigError) as info:
        validate_config(values).resolved({})
    assert expected in str(info.value)


def test_preset_combination_is_checked_after_merging():
    # smoke trains with batch 128; a 64-image subset cannot hold one batch.
    with pytest.raises(ConfigError, match="batch_size 128 is larger than train_subset 64"):
        PipelineConfig(preset="smoke", train_subset=64).resolved({})


def test_groups_split_the_fields():
    cfg = PipelineConfig(preset="seed").resolved({})
    assert "lr" in cfg.group("train") and "output_dir" not in cfg.group("train")
    assert "tta" in cfg.group("eval") and "tta" not in cfg.group("train")
    assert PipelineConfig(preset="seed", output_dir="/elsewhere").resolved({}).group("train") == cfg.group("train")


def test_json_schema_describes_every_field_for_the_ui_form():
    schema = PipelineConfig.model_json_schema()
    props = schema["properties"]
    assert all(p.get("description") for p in props.values())
    epochs = props["epochs"]
    assert epochs["exclusiveMinimum"] == 0 and epochs["maximum"] == 1000


def test_ui_form_shows_plain_inputs_and_dropdowns_in_a_useful_order():
    props = PipelineConfig.model_json_schema()["properties"]
    toggles = [name for name, p in props.items() if "anyOf" in p or "null" in str(p.get("type"))]
    assert toggles == []
    assert [name for name, p in props.items() if "default" in p] == ["preset"]
    for choice in ("preset", "model", "optimizer", "precision", "schedule", "device", "flip", "bad_images"):
        assert props[choice]["type"] == "string" and len(props[choice]["enum"]) >= 2, choice
    order = list(props)
    assert order[:5] == ["preset", "epochs", "seed", "lr", "batch_size"]
    assert order.index("source") < order.index("model") < order.index("tta") < order.index("output_dir")
    # An empty field is still valid and means "the preset's value".
    assert PipelineConfig.model_validate({"preset": "cpu", "epochs": None}).resolved({}).epochs == PRESETS["cpu"]["epochs"]


def test_extra_data_folders_split_on_commas():
    assert PipelineConfig(extra_data="/a, /b").extra_data == ["/a", "/b"]
    assert PipelineConfig().resolved({}).extra_data == []
