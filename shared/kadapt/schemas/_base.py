from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr


class WireModel(BaseModel):
    """Base of every wire type: strict types, unknown fields rejected, immutable.

    Parse JSON with ``Model.model_validate_json(raw)`` (strict JSON mode accepts strings for enums).
    """

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


# JSON has no tuples: sequences accept a JSON array (lax container), their items stay strict.
IntTuple = Annotated[tuple[StrictInt, ...], Field(strict=False)]
StrTuple = Annotated[tuple[StrictStr, ...], Field(strict=False)]
IntTupleTuple = Annotated[tuple[IntTuple, ...], Field(strict=False)]
