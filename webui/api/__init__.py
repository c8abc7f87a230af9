"""The A1111-compatible HTTP API (`/sdapi/v1`): `mount_api(server, app)` adds its routes to a FastAPI app."""
from .routes import mount_api

__all__ = ["mount_api"]
