"""The New run form starts from the recipe's own defaults.

``index.html`` writes the defaults into the form so it is usable at first paint, before any
request; this test keeps those values (and the choices of each select) equal to the
``RunRecipe`` schema, the one place they are defined. Fast and browser-free: it runs in the
default tier.
"""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from tunery.pipeline.config import RunRecipe

INDEX = Path(__file__).resolve().parents[2] / "src" / "tunery" / "web" / "index.html"
# The file picker uploads a dataset; it is not a field of the recipe.
NOT_IN_RECIPE = {"upload"}


class FormFields(HTMLParser):
    """Each ``data-field`` of the run form: its first input or select, and select options."""

    def __init__(self) -> None:
        super().__init__()
        self.fields: dict[str, dict[str, Any]] = {}
        self.current: str | None = None
        self.in_option = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if "data-field" in attributes:
            self.current = attributes["data-field"]
        elif tag in ("input", "select") and self.current and self.current not in self.fields:
            self.fields[self.current] = {"tag": tag, "options": [], **attributes}
        elif tag == "option" and self.current in self.fields:
            self.in_option = True

    def handle_data(self, data: str) -> None:
        if self.in_option:
            self.fields[self.current]["options"].append(data.strip())  # type: ignore[index]

    def handle_endtag(self, tag: str) -> None:
        if tag == "option":
            self.in_option = False


def resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """Follow ``$ref`` (alone or wrapped in ``allOf``) to the definition it names."""
    if "allOf" in node and len(node["allOf"]) == 1:
        node = node["allOf"][0]
    if "$ref" in node:
        return schema["$defs"][node["$ref"].rsplit("/", 1)[-1]]
    return node


def schema_field(schema: dict[str, Any], path: str) -> dict[str, Any]:
    node = schema
    for part in path.split("."):
        node = resolve(schema, node)["properties"][part]
    return node


def form_value(field: dict[str, Any]) -> Any:
    """The value the form submits for this field untouched (as form.js's payload reads it)."""
    if field["tag"] == "select":
        # No option is marked selected: the first one is; a select the page fills from the
        # server's lists (runs to start from) starts with none, and submits null.
        return field["options"][0] if field["options"] else None
    if field.get("type") == "checkbox":
        return "checked" in field
    if "data-list" in field:  # comma-separated, read as a list
        return [item.strip() for item in (field.get("value") or "").split(",") if item.strip()]
    text = field.get("value") or ""
    if text == "":
        return None
    try:
        return float(text)
    except ValueError:
        return text


def test_the_form_shows_the_recipe_defaults() -> None:
    parser = FormFields()
    parser.feed(INDEX.read_text())
    schema = RunRecipe.model_json_schema()
    checked = []
    for path, field in parser.fields.items():
        if path in NOT_IN_RECIPE:
            continue
        declared = schema_field(schema, path)
        if "default" not in declared:
            continue  # required: the user fills it in
        assert form_value(field) == declared["default"], path
        if field["tag"] == "select" and field["options"]:
            choices = resolve(schema, declared)["enum"]
            assert set(field["options"]) == set(choices), f"{path}: the recipe offers {choices}"
        checked.append(path)
    assert {"training.learning_rate", "lora.rank", "export.gguf", "method.type"} <= set(checked)
