"""The generation engine: models, samplers, conditioning and processing. No UI or HTTP code lives here."""
