"""Every definition loads, in both environments, and the location loads the same way from each entry point."""

import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml

from panel_pipeline.definitions import defs
from panel_pipeline.extractor import jobs as extractor_jobs
from panel_pipeline.extractor.resources import SurveyGizmoResource
from panel_pipeline.local.stack import local_environment
from panel_pipeline.mailer import jobs as mailer_jobs
from panel_pipeline.mailer.resources import SesResource, SqsResource
from panel_pipeline.resources import ENVIRONMENTS, resources_for
from panel_pipeline.sampler import jobs as sampler_jobs
from panel_pipeline.sampler.resources import CompletesFiles, FieldworkTiming
from panel_pipeline.shared.metadata import OWNERS
from panel_pipeline.shared.resources import ContactBudget, MongoResource, StandingWorkers
from panel_pipeline.updater import jobs as updater_jobs

ROOT = Path(__file__).resolve().parents[1]
LOCATION = "panel_pipeline"


ASSETS = {
    "surveygizmo_responses",
    "users",
    "survey_completions",
    "surveygizmo_deletions",
    "samples",
    "response_rates",
    "sample_fieldwork",
    "sample_completes",
    "sample_directory",
    "dynamic_sample_updates",
    "mailings",
    "transactional_mail",
    "ses_feedback",
    "ses_suppression_sync",
    "email_templates",
}
SENSOR_JOBS = {
    "samples_queue_sensor": "sample_job",
    "fieldwork_sensor": "sample_fieldwork_job",
    "mailings_queue_sensor": "mailing_job",
    "transactional_mail_queue_sensor": "transactional_mail_job",
    "transactions_queue_sensor": "survey_completions_job",
    "member_changes_sensor": "dynamic_sample_updates_job",
    "ses_feedback_sensor": "ses_feedback_job",
    "prompt_mail_worker_sensor": "prompt_mail_worker_job",
    "dynamic_samples_worker_sensor": "dynamic_samples_worker_job",
}
SCHEDULE_JOBS = {
    "hourly_extract_schedule": "extract_job",
    "weekly_deletion_sweep_schedule": "deletion_sweep_job",
    "daily_response_rates_schedule": "response_rates_job",
    "hourly_suppression_sync_schedule": "ses_suppression_job",
}
RESOURCE_TYPES = {
    "mongo": MongoResource,
    "surveygizmo": SurveyGizmoResource,
    "ses": SesResource,
    "sqs": SqsResource,
    "workers": StandingWorkers,
    "fieldwork_timing": FieldworkTiming,
    "contact_budget": ContactBudget,
    "completes_files": CompletesFiles,
}
SECRETS = {("surveygizmo", "api_token"), ("surveygizmo", "api_token_secret"), ("ses", "unsubscribe_secret")}
AWS_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


def environment_variables(resources: dict[str, Any]) -> dict[tuple[str, str], str]:
    """(resource, field) -> the variable it reads, for every field set from the environment."""
    return {
        (name, field): value.env_var_name
        for name, resource in resources.items()
        for field, value in vars(resource).items()
        if isinstance(value, dg.EnvVar)
    }


def test_every_definition_resolves_with_its_job_and_resources():
    repository = defs.get_repository_def()
    repository.load_all_definitions()
    assert {key.to_user_string() for key in repository.asset_graph.get_all_asset_keys()} >= ASSETS
    sensors = {sensor.name: sensor for sensor in repository.sensor_defs}
    assert {name: sensors[name].job_name for name in SENSOR_JOBS if name in sensors} == SENSOR_JOBS
    assert {"queue_run_failure_sensor", "queue_run_cancel_sensor"} <= set(sensors)
    schedules = {schedule.name: schedule.job_name for schedule in repository.schedule_defs}
    assert {name: schedules.get(name) for name in SCHEDULE_JOBS} == SCHEDULE_JOBS
    provided = set(repository.get_top_level_resources())
    assert provided == set(RESOURCE_TYPES)
    for assets in repository.assets_defs_by_key.values():
        assert assets.required_resource_keys - {"io_manager"} <= provided, assets.keys  # io_manager: Dagster's default
    for sensor in repository.sensor_defs:
        assert sensor.required_resource_keys <= provided, sensor.name


def test_every_asset_follows_the_metadata_conventions():
    """Owners, kinds, a description and a link to its code: what the UI shows of every asset."""
    repository = defs.get_repository_def()
    for key, assets in repository.assets_defs_by_key.items():
        spec = assets.specs_by_key[key]
        assert spec.owners == OWNERS, key
        assert "python" in spec.kinds and len(spec.kinds) <= 3, key
        assert spec.description, key
        assert "dagster/code_references" in spec.metadata, key


@pytest.mark.parametrize("module", [extractor_jobs, mailer_jobs, sampler_jobs, updater_jobs])
def test_a_job_has_its_dagster_name_in_python(module):
    jobs = {name: job for name, job in vars(module).items() if name.endswith("_job")}
    assert jobs and all(name == job.name for name, job in jobs.items())


@pytest.mark.parametrize("environment", ["local", "production"])
def test_both_environments_provide_every_resource(environment):
    resources = resources_for(environment)
    assert {name: type(resource) for name, resource in resources.items()} == RESOURCE_TYPES


def test_local_and_production_read_secrets_from_the_same_variables_and_aws_keys_from_boto3():
    local, production = (environment_variables(resources_for(environment)) for environment in ENVIRONMENTS)
    assert {key: local.get(key) for key in SECRETS} == {key: production[key] for key in SECRETS}
    for environment in ENVIRONMENTS:
        for name in ("ses", "sqs"):
            resource = resources_for(environment)[name]
            assert (resource.aws_access_key_id, resource.aws_secret_access_key) == (None, None), (environment, name)


def test_the_local_stack_sets_every_variable_the_local_resources_read():
    environment = local_environment()
    assert set(environment_variables(resources_for("local")).values()) - set(environment) == set()
    assert set(AWS_KEYS) <= set(environment) and environment["PANEL_ENV"] == "local"


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
