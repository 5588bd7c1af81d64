"""The Extractor: SurveyGizmo responses into Mongo, and the normalized users table."""
