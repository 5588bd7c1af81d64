"""The queue shared with the backend: `processed: false` documents in, results written back."""
