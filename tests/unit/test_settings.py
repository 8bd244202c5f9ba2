"""Settings: tunery.yaml and the TUNERY_* variables, typed in one leaf module, every problem
reported with the field or variable to fix."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel

from tunery.environment import Environment, environment, resolve_data_dir
from tunery.errors import ConfigError
from tunery.settings import ClusterSettings, NodeSettings, Settings, StorageSettings
from tunery.tiers import TierSettings


@pytest.fixture(autouse=True)
def no_tunery_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in Environment.model_fields:
        monkeypatch.delenv(f"TUNERY_{name.upper()}", raising=False)
    for name in Settings.model_fields:
        monkeypatch.delenv(f"TUNERY_{name.upper()}", raising=False)
    monkeypatch.setenv("TUNERY_LOCAL_TIER", "cpu")


def write(data_dir: Path, text: str) -> None:
    (data_dir / "tunery.yaml").write_text(text, encoding="utf-8")


def problems(error: pytest.ExceptionInfo[ConfigError]) -> dict[str, str]:
    return {problem.field: problem.message for problem in error.value.problems}


def test_without_a_file_one_local_node_of_this_machines_tier(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TUNERY_LOCAL_TIER", "t4")
    settings = Settings.load(tmp_path)
    assert settings.data_dir == tmp_path
    assert settings.nodes == [NodeSettings(name="local-0", tier="t4")]
    assert settings.tiers == [TierSettings(id="t4", name="NVIDIA T4", credits_per_minute=0)]
    assert settings.cluster == ClusterSettings(kind="local")
    assert settings.database_path == tmp_path / "tunery.db"


def test_the_file_is_read_and_a_variable_wins_over_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(
        tmp_path,
        "lease_seconds: 30\nmax_attempts: 5\n"
        "tiers: [{id: cpu, name: CPU, credits_per_minute: 2}]\n"
        "nodes: [{name: a, tier: cpu}, {name: b, tier: gpu}]\n",
    )
    monkeypatch.setenv("TUNERY_MAX_ATTEMPTS", "7")
    settings = Settings.load(tmp_path)
    assert (settings.lease_seconds, settings.max_attempts) == (30, 7)
    assert [node.name for node in settings.nodes] == ["a", "b"]
    assert settings.tier("cpu") == TierSettings(id="cpu", name="CPU", credits_per_minute=2)
    assert settings.tier("gpu") == TierSettings(id="gpu", name="GPU", credits_per_minute=0)


def test_the_data_dir_comes_from_the_variable_when_not_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, "admin_grant: 5\n")
    monkeypatch.setenv("TUNERY_DATA_DIR", str(tmp_path))
    settings = Settings.load()
    assert (settings.data_dir, settings.admin_grant) == (tmp_path, 5)


def test_every_problem_in_the_file_is_named_with_its_field(tmp_path: Path) -> None:
    write(tmp_path, "lease_seconds: 0.5\nbogus: 1\nnodes: [{name: a}]\n")
    with pytest.raises(ConfigError) as error:
        Settings.load(tmp_path)
    assert problems(error) == {
        "lease_seconds": "Input should be greater than 1",
        "bogus": "unknown field",
        "nodes.0.tier": "Field required",
    }
    assert error.value.hint == f"fix {tmp_path / 'tunery.yaml'}"


def test_a_node_name_or_tier_id_given_twice_is_refused(tmp_path: Path) -> None:
    """The second would be ignored: its runs would wait for a node that is never used."""
    write(
        tmp_path,
        "tiers: [{id: t4, name: A, credits_per_minute: 1},"
        " {id: t4, name: B, credits_per_minute: 2}]\n"
        "nodes: [{name: gpu-0, tier: t4}, {name: gpu-0, tier: t4}]\n",
    )
    with pytest.raises(ConfigError) as error:
        Settings.load(tmp_path)
    assert problems(error) == {
        "tiers": "id 't4' appears twice; each id must be unique",
        "nodes": "name 'gpu-0' appears twice; each name must be unique",
    }


def test_a_tier_trains_on_its_gpus_or_its_cpu_processes(tmp_path: Path) -> None:
    write(
        tmp_path,
        "tiers:\n"
        "  - {id: cpu, name: CPU, credits_per_minute: 1, processes: 2}\n"
        "  - {id: h100, name: 8 H100, credits_per_minute: 0, gpus: 8}\n"
        "  - {id: t4, name: T4, credits_per_minute: 0}\n",
    )
    settings = Settings.load(tmp_path)
    devices = {tier: settings.tier(tier).devices for tier in ("cpu", "h100", "t4")}
    assert devices == {"cpu": 2, "h100": 8, "t4": 1}


def test_processes_are_for_tiers_without_gpus(tmp_path: Path) -> None:
    write(
        tmp_path,
        "tiers:\n"
        "  - {id: h100, name: H100, credits_per_minute: 0, gpus: 2, processes: 2}\n"
        "  - {id: t4, name: T4, credits_per_minute: 0, processes: 2}\n"
        "  - {id: cpu, name: CPU, credits_per_minute: 1, processes: 0}\n"
        "  - {id: big, name: Big, credits_per_minute: 1, gpus: 0, processes: 65}\n",
    )
    with pytest.raises(ConfigError) as error:
        Settings.load(tmp_path)
    found = problems(error)
    assert set(found) == {
        "tiers.0.processes",
        "tiers.1.processes",
        "tiers.2.processes",
        "tiers.3.processes",
    }
    assert "tier h100 trains on one process per GPU (set gpus" in found["tiers.0.processes"]
    assert "tier t4 trains on one process per GPU" in found["tiers.1.processes"]
    assert found["tiers.2.processes"] == "Input should be greater than or equal to 1"
    assert found["tiers.3.processes"] == "Input should be less than or equal to 64"


def test_a_bad_variable_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNERY_HEARTBEAT_SECONDS", "often")
    monkeypatch.setenv("TUNERY_CLUSTER__ADDRESS", "ray://head:10001")
    with pytest.raises(ConfigError) as error:
        Settings.load(tmp_path)
    assert set(problems(error)) == {"TUNERY_HEARTBEAT_SECONDS", "TUNERY_CLUSTER__ADDRESS"}
    assert "kind: ray" in problems(error)["TUNERY_CLUSTER__ADDRESS"]
    assert error.value.hint == "fix or unset the variables named"


def test_a_list_variable_that_is_not_json_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TUNERY_NODES", "local-0")
    with pytest.raises(ConfigError, match="nodes") as error:
        Settings.load(tmp_path)
    assert "JSON" in error.value.hint


@pytest.mark.parametrize(
    ("text", "message"),
    [("tiers: [", "not valid YAML"), ("- a\n- b\n", "must be a mapping of settings")],
)
def test_a_file_that_is_not_a_mapping_is_reported(tmp_path: Path, text: str, message: str) -> None:
    write(tmp_path, text)
    with pytest.raises(ConfigError, match=message) as error:
        Settings.load(tmp_path)
    assert str(tmp_path / "tunery.yaml") in error.value.message


def test_an_empty_file_means_defaults(tmp_path: Path) -> None:
    write(tmp_path, "# nothing yet\n")
    assert Settings.load(tmp_path).lease_seconds == 20


def test_a_ray_cluster_needs_an_address_and_a_shared_checkpoint_dir(tmp_path: Path) -> None:
    write(tmp_path, "cluster: {kind: ray, checkpoint_dir: shared/ckpt}\n")
    with pytest.raises(ConfigError) as error:
        Settings.load(tmp_path)
    assert problems(error) == {
        "cluster.address": "required with kind: ray",
        "cluster.checkpoint_dir": "must be an absolute path (the same on every node)",
    }


def test_a_ray_cluster_with_accelerator_tiers(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    write(
        tmp_path,
        "cluster: {kind: ray, address: auto, checkpoint_dir: /shared/ckpt,"
        " accelerators: {a100: A100}}\n"
        "tiers: [{id: a100, name: A100, credits_per_minute: 4}, "
        "{id: cpu, name: CPU, credits_per_minute: 1}, "
        "{id: two, name: Two GPUs, credits_per_minute: 8, gpus: 2}]\n",
    )
    settings = Settings.load(tmp_path)
    assert settings.cluster.accelerators == {"a100": "A100"}
    gpus = {tier.id: tier.gpus_per_attempt for tier in settings.tiers}
    assert gpus == {"a100": 1, "cpu": 0, "two": 2}


def test_the_environment_is_typed_and_names_a_bad_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TUNERY_URL", "  http://tunery.example:8420 ")
    monkeypatch.setenv("TUNERY_TOKEN", "   ")
    monkeypatch.setenv("TUNERY_LLAMA_CPP_DIR", "~/llama.cpp")
    monkeypatch.setenv("TUNERY_TORCH_THREADS", "4")
    variables = environment()
    assert variables.url == "http://tunery.example:8420"
    assert variables.token is None
    assert variables.llama_cpp_dir == Path("~/llama.cpp").expanduser()
    assert variables.torch_threads == 4
    monkeypatch.setenv("TUNERY_TORCH_THREADS", "0")
    with pytest.raises(ConfigError) as error:
        environment()
    assert problems(error) == {"TUNERY_TORCH_THREADS": "Input should be greater than or equal to 1"}


def test_the_data_dir_is_the_option_else_the_variable_else_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert resolve_data_dir() == Path("~/.tunery").expanduser()
    monkeypatch.setenv("TUNERY_DATA_DIR", "~/state")
    assert resolve_data_dir() == Path("~/state").expanduser()
    assert resolve_data_dir(tmp_path) == tmp_path


@pytest.mark.parametrize(
    "model",
    [Settings, Environment, TierSettings, NodeSettings, ClusterSettings, StorageSettings],
)
def test_every_field_says_what_it_is(model: type[BaseModel]) -> None:
    undocumented = [name for name, field in model.model_fields.items() if not field.description]
    assert undocumented == []


def test_settings_is_a_leaf_the_pipeline_may_import() -> None:
    imported = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, tunery.settings; print(sorted(m for m in sys.modules if 'tunery' in m))",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert imported.strip() == (
        "['tunery', 'tunery.environment', 'tunery.errors', 'tunery.settings', 'tunery.tiers']"
    )
