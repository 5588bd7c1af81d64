"""Every definition loads, in both environments, and the location loads the same way from each entry point."""

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from panel_pipeline.definitions import defs
from panel_pipeline.resources import resources_for

ROOT = Path(__file__).resolve().parents[1]
LOCATION = "panel_pipeline"


def test_every_definition_resolves():
    repository = defs.get_repository_def()
    repository.load_all_definitions()
    assert repository.get_all_jobs() is not None
    for sensor in repository.sensor_defs:
        assert sensor.name


@pytest.mark.parametrize("environment", ["local", "production"])
def test_both_environments_provide_every_resource(environment):
    assert set(resources_for(environment)) >= {"mongo", "surveygizmo", "ses"}


def test_unknown_environment_is_refused():
    with pytest.raises(ValueError, match="PANEL_ENV"):
        resources_for("staging")


def test_location_name_is_the_same_everywhere():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    workspace = yaml.safe_load((ROOT / "workspace.yaml").read_text())
    (entry,) = workspace["load_from"]
    assert entry["python_module"]["location_name"] == LOCATION
    assert pyproject["tool"]["dagster"]["code_location_name"] == LOCATION
    assert pyproject["tool"]["dg"]["project"]["code_location_name"] == LOCATION


@pytest.mark.slow
@pytest.mark.parametrize(
    "command, expected",
    [
        (["dagster", "definitions", "validate", "-w", "workspace.yaml"], f"code location {LOCATION}"),
        (["dagster", "definitions", "validate"], f"code location {LOCATION}"),
        (["dg", "check", "defs"], "All definitions loaded successfully"),
    ],
    ids=["workspace.yaml", "pyproject", "dg"],
)
def test_the_location_loads_from_every_entry_point(command, expected):
    executable = Path(sys.executable).with_name(command[0])
    completed = subprocess.run([str(executable), *command[1:]], cwd=ROOT, capture_output=True, text=True)
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output
    assert expected in output
