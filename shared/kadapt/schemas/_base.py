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

# Policy, method and bundle names can become paths (``<repository>/<name>/<version>``): a name, or
# ``name/version``, each part starting with a letter or digit, so never ``..``, ``/etc`` or ``a\\b``.
# Requests naming anything else are 422 ``invalid-input`` at the edge, before any lookup.
MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}(/[A-Za-z0-9][A-Za-z0-9._-]{0,63})?$"
ModelName = Annotated[StrictStr, Field(pattern=MODEL_NAME_PATTERN)]
