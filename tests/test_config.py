import pytest

from r3mem.config import ConfigError, R3MemConfig, load_config, save_config


@pytest.mark.parametrize("field,value", [
    ("num_mem_tokens", 0), ("segment_len", -3), ("memory_mode", "prefix"), ("reversible_mode", "both"),
    ("bptt_depth", 0), ("hierarchy_levels", ("paragraph",)), ("hierarchy_levels", ("document", "chapter")),
    ("paragraph_ratio", 0.5), ("w_cyc", -1.0), ("lora_dropout", 1.0), ("base_model", ""), ("lora_rank", 2.5),
    ("num_mem_tokens", True),
])
def test_invalid_values_name_the_field(field, value):
    with pytest.raises(ConfigError) as e:
        R3MemConfig(**{field: value})
    assert str(e.value).startswith(field + ":")


def test_write_adapter_needs_direction_adapters():
    assert R3MemConfig(write_adapter=True).write_adapter
    with pytest.raises(ConfigError, match="^write_adapter: needs reversible_mode 'adapters'"):
        R3MemConfig(write_adapter=True, reversible_mode="coupling")
    with pytest.raises(ConfigError, match="^write_adapter: must be true or false"):
        R3MemConfig(write_adapter="yes")


def test_num_mem_tokens_must_fit_write_table():
    with pytest.raises(ConfigError, match="num_mem_tokens"):
        R3MemConfig(num_mem_tokens=32, max_slot_tokens=16)


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_round_trip(tmp_path, suffix):
    cfg = R3MemConfig(num_mem_tokens=8, memory_mode="layerwise", hierarchy_levels=("document", "entity"),
                      target_modules=("q_proj", "v_proj"), w_cyc=0.0)
    path = tmp_path / f"cfg{suffix}"
    save_config(cfg, path)
    assert load_config(path) == cfg


def test_unknown_field_and_bad_file(tmp_path):
    with pytest.raises(ConfigError, match="^colour: unknown config field"):
        R3MemConfig.from_dict({"colour": "red"})
    bad = tmp_path / "bad.yaml"
    bad.write_text("num_mem_tokens: [unclosed")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "missing.yaml")
