"""The Updater: dynamic samples kept current as members join or answer surveys."""
