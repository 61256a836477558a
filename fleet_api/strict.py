"""The one base of every request body and every spec the API stores: unknown fields and NaN/Infinity are refused.

pydantic's default ignores unknown fields, so a typo (or a field this version does not know, such as
`runtime.require_provider` sent to an older API) would be dropped silently and the caller told 201. Every
request model derives from StrictModel instead, so such a request is a 422 naming the field.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
