from pydantic import BaseModel, ConfigDict


class WireModel(BaseModel):
    """Base of every wire type: strict types, unknown fields rejected, immutable."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)
