from __future__ import annotations

import pytest

from glioma_nb import STEPS, config, paths, step_section


def test_deep_merge_merges_mappings_and_replaces_the_rest():
    base = {"a": {"b": 1, "c": [1, 2]}, "d": 1}
    out = config.deep_merge(base, {"a": {"c": [3]}, "d": 2})
    assert out == {"a": {"b": 1, "c": [3]}, "d": 2}
    assert base["a"]["c"] == [1, 2]  # inputs untouched


@pytest.mark.parametrize("text, expected", [
    ("segment.n_overlay_cases=2", {"segment": {"n_overlay_cases": 2}}),
    ("cohort.geometry.spacing=[1, 1, 5]", {"cohort": {"geometry": {"spacing": [1, 1, 5]}}}),
    ("run.export_html=false", {"run": {"export_html": False}}),
    ("cohort.description=two words", {"cohort": {"description": "two words"}}),
])
def test_parse_override(text, expected):
    assert config.parse_override(text) == expected


def test_override_without_equals_is_an_error():
    with pytest.raises(config.ConfigError, match="section.key=value"):
        config.parse_override("segment.n_overlay_cases")


def test_unknown_key_is_an_error_naming_key_and_known_keys():
    with pytest.raises(config.ConfigError) as err:
        config.resolve_config("synthetic", ["segment.n_overlay_case=2"])
    assert "unknown key 'segment.n_overlay_case'" in str(err.value)
    assert "n_overlay_cases" in str(err.value)


def test_wrong_type_is_an_error():
    with pytest.raises(config.ConfigError, match="'run.export_html' must be bool"):
        config.resolve_config("synthetic", ["run.export_html=3"])


def test_all_problems_reported_together():
    with pytest.raises(config.ConfigError) as err:
        config.resolve_config("synthetic", ["foo.bar=1", "run.kernel=3"])
    assert "unknown key 'foo'" in str(err.value) and "'run.kernel' must be str" in str(err.value)


def test_open_mapping_accepts_free_keys_and_int_for_float():
    cfg = config.resolve_config("synthetic", ["cohort.files.flair=FLAIR", "qc.min_nonzero_fraction=0"])
    assert cfg["cohort"]["files"]["flair"] == "FLAIR"
    assert cfg["qc"]["min_nonzero_fraction"] == 0


def test_unknown_cohort_lists_the_available_ones():
    with pytest.raises(config.ConfigError, match="available: .*synthetic"):
        config.resolve_config("no-such-cohort")


@pytest.mark.parametrize("cohort", config.available_cohorts())
def test_every_cohort_yaml_loads_and_validates(cohort):
    cfg = config.resolve_config(cohort)
    assert cfg["cohort"]["name"] == cohort
    assert set(cfg) == set(config.base_config())


def test_every_yaml_in_configs_is_valid_yaml():
    files = sorted(paths.configs_dir().rglob("*.yaml"))
    assert files, "no YAML found under configs/"
    for f in files:
        assert isinstance(config.load_yaml(f), dict), f


def test_every_step_has_a_config_section():
    base = config.base_config()
    for step in STEPS:
        assert isinstance(base[step_section(step)], dict)


def test_config_hash_is_stable_and_sensitive():
    a = config.resolve_config("synthetic")
    assert config.config_hash(a) == config.config_hash(config.resolve_config("synthetic"))
    assert config.config_hash(a) != config.config_hash(config.resolve_config("synthetic", ["project.seed=1"]))


def test_expand_uses_environment_and_defaults(monkeypatch):
    monkeypatch.setenv("GLIOMA_NB_SHARED", "/x/shared")
    assert paths.expand("${GLIOMA_NB_SHARED}/brats18") == "/x/shared/brats18"
    assert paths.expand("${UNSET_VAR_FOR_TEST:-fallback}/a") == "fallback/a"
    with pytest.raises(KeyError, match="UNSET_VAR_FOR_TEST"):
        paths.expand("${UNSET_VAR_FOR_TEST}")
