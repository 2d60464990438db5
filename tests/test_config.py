"""mlpipe.config: profiles from mlpipe.toml or [tool.mlpipe], found upwards, validated."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlpipe.config import Profile, find_config, load_profile
from mlpipe.errors import ConfigError

TOML = """
default_profile = "dev"

[profiles.dev]
backend = "local"
store = ".mlpipe-dev"

[profiles.fast]
backend = "local"
store = "stores/fast"
options = { max_workers = 4 }

[profiles.remote]
backend = "vertex"
store = "gs://bucket/mlpipe"
image = "python:3.11-slim"
options = { project = "p", location = "europe-west4" }
"""


def test_no_configuration_gives_the_local_default(_isolated_cwd: Path) -> None:
    profile = load_profile()
    assert profile == Profile(name="default")
    assert (profile.backend, profile.store, profile.options) == ("local", ".mlpipe", {})
    assert load_profile("local").name == "local"
    with pytest.raises(ConfigError, match=r"profile .prod. is not defined: no mlpipe.toml or \[tool.mlpipe\] found"):
        load_profile("prod")


def test_mlpipe_toml_found_upwards_and_store_resolved_against_it(_isolated_cwd: Path) -> None:
    (_isolated_cwd / "mlpipe.toml").write_text(TOML)
    deep = _isolated_cwd / "a" / "b"
    deep.mkdir(parents=True)
    profile = load_profile(start=deep)
    assert profile.name == "dev"
    assert profile.store == str(_isolated_cwd / ".mlpipe-dev")
    assert profile.source == str(_isolated_cwd / "mlpipe.toml")
    fast = load_profile("fast", start=deep)
    assert fast.store == str(_isolated_cwd / "stores" / "fast")
    assert fast.options == {"max_workers": 4}
    remote = load_profile("remote")
    assert remote.store == "gs://bucket/mlpipe"  # URLs are left alone
    assert remote.image == "python:3.11-slim"


def test_cwd_is_searched_by_default(_isolated_cwd: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (_isolated_cwd / "mlpipe.toml").write_text(TOML)
    sub = _isolated_cwd / "sub"
    sub.mkdir()
    monkeypatch.chdir(sub)
    assert load_profile().store == str(_isolated_cwd / ".mlpipe-dev")


def test_pyproject_tool_table(_isolated_cwd: Path) -> None:
    (_isolated_cwd / "pyproject.toml").write_text(
        '[project]\nname = "x"\n\n[tool.mlpipe]\ndefault_profile = "dev"\n\n[tool.mlpipe.profiles.dev]\n'
        'store = "/abs/store"\n'
    )
    profile = load_profile()
    assert profile.name == "dev" and profile.store == "/abs/store" and profile.backend == "local"
    found = find_config()
    assert found is not None and found[0].name == "pyproject.toml"


def test_pyproject_without_tool_table_is_skipped(_isolated_cwd: Path) -> None:
    (_isolated_cwd / "pyproject.toml").write_text('[project]\nname = "x"\n')
    assert find_config(_isolated_cwd) is None


def test_mlpipe_toml_wins_over_pyproject(_isolated_cwd: Path) -> None:
    (_isolated_cwd / "pyproject.toml").write_text('[tool.mlpipe.profiles.other]\nstore = "x"\n')
    (_isolated_cwd / "mlpipe.toml").write_text(TOML)
    assert load_profile().name == "dev"


def test_profile_choice_order(_isolated_cwd: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (_isolated_cwd / "mlpipe.toml").write_text(TOML)
    assert load_profile().name == "dev"
    monkeypatch.setenv("MLPIPE_PROFILE", "fast")
    assert load_profile().name == "fast"
    assert load_profile("remote").name == "remote"  # the argument wins over the variable


def test_single_profile_is_the_default(_isolated_cwd: Path) -> None:
    (_isolated_cwd / "mlpipe.toml").write_text('[profiles.only]\nstore = "s"\n')
    assert load_profile().name == "only"


def test_several_profiles_and_no_default(_isolated_cwd: Path) -> None:
    (_isolated_cwd / "mlpipe.toml").write_text('[profiles.a]\nstore = "s"\n[profiles.b]\nstore = "t"\n')
    with pytest.raises(ConfigError, match=r"several profiles \(a, b\) and no default_profile"):
        load_profile()


def test_empty_file_uses_the_default_store_next_to_it(_isolated_cwd: Path) -> None:
    (_isolated_cwd / "mlpipe.toml").write_text("")
    sub = _isolated_cwd / "sub"
    sub.mkdir()
    profile = load_profile(start=sub)
    assert profile.store == str(_isolated_cwd / ".mlpipe")


def test_unknown_profile_lists_defined_ones(_isolated_cwd: Path) -> None:
    (_isolated_cwd / "mlpipe.toml").write_text(TOML)
    with pytest.raises(ConfigError) as caught:
        load_profile("prod")
    assert "profile 'prod' is not defined in" in str(caught.value)
    assert "defined profiles: dev, fast, remote" in str(caught.value)
    assert caught.value.profile == "prod"


def test_unknown_profile_key_is_rejected_with_valid_keys(_isolated_cwd: Path) -> None:
    (_isolated_cwd / "mlpipe.toml").write_text('[profiles.dev]\nbackend = "local"\nstroe = ".mlpipe"\n')
    with pytest.raises(ConfigError) as caught:
        load_profile()
    message = str(caught.value)
    assert "profile 'dev': stroe: unknown key" in message
    assert "Valid keys: backend, store, image, options, storage_options" in message


def test_unknown_top_level_key(_isolated_cwd: Path) -> None:
    (_isolated_cwd / "mlpipe.toml").write_text('default = "dev"\n')
    with pytest.raises(ConfigError, match=r"default: unknown key. Top-level keys are: default_profile, profiles"):
        load_profile()


def test_invalid_toml(_isolated_cwd: Path) -> None:
    (_isolated_cwd / "mlpipe.toml").write_text("profiles = [\n")
    with pytest.raises(ConfigError, match=r"invalid TOML"):
        load_profile()


def test_wrong_value_type(_isolated_cwd: Path) -> None:
    (_isolated_cwd / "mlpipe.toml").write_text('[profiles.dev]\noptions = "fast"\n')
    with pytest.raises(ConfigError, match=r"options: Input should be a valid dictionary"):
        load_profile()


def test_backend_options_from_the_profile_are_validated(_isolated_cwd: Path) -> None:
    from resources.pipelines import arithmetic

    (_isolated_cwd / "mlpipe.toml").write_text('[profiles.dev]\noptions = { workers = 3 }\n')
    with pytest.raises(ConfigError, match=r"invalid options for backend 'local'.*Valid options: max_workers"):
        arithmetic.run()


def test_run_uses_the_profile_store(_isolated_cwd: Path) -> None:
    from resources.pipelines import arithmetic

    (_isolated_cwd / "mlpipe.toml").write_text(TOML)
    run = arithmetic.run(profile="fast", n=2)
    assert run.status == "succeeded"
    assert (_isolated_cwd / "stores" / "fast" / "runs" / run.id).is_dir()
    assert not (_isolated_cwd / ".mlpipe").exists()
