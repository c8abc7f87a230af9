"""Services above the engine: output storage, settings, the job queue."""
