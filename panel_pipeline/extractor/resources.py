"""SurveyGizmo (Alchemer v5) as a Dagster resource."""

from __future__ import annotations

import dagster as dg
from pydantic import Field

from panel_pipeline.extractor.retries import RetryPolicy
from panel_pipeline.extractor.surveygizmo import SurveyGizmoClient


class SurveyGizmoResource(dg.ConfigurableResource):
    """The SurveyGizmo account: credentials from the environment, never logged or put in an error."""

    api_token: str = Field(description="API token; set it from SURVEYGIZMO_API_TOKEN.")
    api_token_secret: str = Field(description="API token secret; set it from SURVEYGIZMO_API_TOKEN_SECRET.")
    region: str = Field(default="EU", description="Data centre of the account: US, EU or CA.")
    base_url: str | None = Field(default=None, description="Overrides the data-centre host (the local server).")
    account_time_zone: str | None = Field(default=None, description="IANA zone of the account; default per region.")
    calls_per_minute: float = Field(default=240.0, description="Client-side rate limit (the account's limit is 240).")
    profile_survey_ids: str = Field(description="Comma-separated ids of the surveys whose answers feed users.profile.")
    max_attempts: int = Field(default=6, description="Tries per call, retries with jittered backoff included.")
    retry_base_delay_seconds: float = Field(default=2.0, description="First retry delay; grows exponentially.")

    def client(self) -> SurveyGizmoClient:
        return SurveyGizmoClient(
            self.api_token,
            self.api_token_secret,
            region=self.region,
            base_url=self.base_url,
            account_time_zone=self.account_time_zone,
            calls_per_minute=self.calls_per_minute,
            retry=RetryPolicy(
                max_attempts=self.max_attempts,
                base_delay=self.retry_base_delay_seconds,
                throttle_delay=self.retry_base_delay_seconds * 7.5,
            ),
        )

    def survey_ids(self) -> list[str]:
        return [survey.strip() for survey in self.profile_survey_ids.split(",") if survey.strip()]
