"""What ``/openapi.json`` says of bodies that routes read raw (to report every problem at
once, in their own error shape): the schema of the model they are checked against."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel


def request_body(model: type[BaseModel], **components: str) -> dict[str, Any]:
    """``openapi_extra`` documenting a raw JSON body as ``model``'s schema (nested models in
    its own ``$defs``); ``components`` names fields that take one of the app's documented
    schemas (``tunery="RunRecipe"``)."""
    schema = model.model_json_schema()
    for name, component in components.items():
        described = schema["properties"][name].get("description", "")
        schema["properties"][name] = {
            "$ref": f"#/components/schemas/{component}",
            "description": described,
        }
    body = {"application/json": {"schema": schema}}
    return {"requestBody": {"required": True, "content": body}}


def open_body(fields: Iterable[str], *, required: Iterable[str] = ()) -> dict[str, Any]:
    """``openapi_extra`` naming the fields of a raw JSON body that is checked field by field
    (OpenAI's chat request): each field listed, its checks in the route's own code."""
    schema = {
        "type": "object",
        "properties": {name: {} for name in sorted(fields)},
        "required": sorted(required),
    }
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}
