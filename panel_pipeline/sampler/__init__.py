"""The Sampler: nationally representative and tailor-made samples, on demand and from the queue."""
