"""MkDocs hooks (``mkdocs.yml``): the reference pages generated from the code, so that
they cannot drift from it.

- ``reference/configuration.md``: every :class:`app.settings.Settings` field (its
  variable, type, default and docstring) and the object-store variables;
- ``reference/openapi.json``: the OpenAPI document the service serves (git-ignored),
  which ``reference/http-api.md`` renders with the ``neoteroi.mkdocsoad`` plugin.

A field without a docstring, or whose docstring names another variable, fails the build.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import itertools
import json
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin, get_type_hints

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files


def _attribute_docs(cls: type) -> dict[str, str]:
    """The docstrings written under a class's attributes (PEP 257's attribute docstrings)."""
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs = {}
    for target, following in itertools.pairwise(body):
        if (
            isinstance(target, ast.AnnAssign)
            and isinstance(target.target, ast.Name)
            and isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            docs[target.target.id] = inspect.cleandoc(following.value.value)
    return docs


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _default(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, Path):
        return f"`{value.as_posix()}`" if not value.is_absolute() else f"`{value.name}` (packaged)"
    if value == "":
        return "empty"
    return f"`{value}`"


def _type_name(hint: Any) -> str:
    """``int``, ``Path or None``, ``"kafka" or "memory"``, ``duration``: what a reader needs."""
    if get_origin(hint) in (Union, UnionType):
        return " or ".join(_type_name(arg) for arg in get_args(hint))
    if get_origin(hint) is Annotated:
        kinds = [getattr(meta, "kind", "") for meta in hint.__metadata__]
        return next((kind for kind in kinds if kind), None) or _type_name(hint.__origin__)
    if get_origin(hint) is Literal:
        return " or ".join(f'"{value}"' for value in get_args(hint))
    return "None" if hint is type(None) else str(getattr(hint, "__name__", hint))


def configuration_page() -> str:
    from app.settings import ObjectStoreSettings, Settings, variable

    docs = _attribute_docs(Settings)
    hints = get_type_hints(Settings, include_extras=True)
    rows = []
    for item in dataclasses.fields(Settings):
        name = variable(item.name)
        doc = docs.get(item.name)
        if doc is None:
            raise ValueError(f"Settings.{item.name} has no docstring")
        head, sep, text = doc.partition(":")
        if not sep or head.strip() != name:
            raise ValueError(f"Settings.{item.name}: its docstring must start with '{name}:'")
        kind = _type_name(hints[item.name])
        rows.append(f"| `{name}` | {_cell(kind)} | {_default(item.default)} | {_cell(text)} |")
    store = _attribute_docs(ObjectStoreSettings)
    aws = [f"| {_cell(store[f.name])} |" for f in dataclasses.fields(ObjectStoreSettings)]
    return "\n".join(
        [
            "# Configuration",
            "",
            "Every setting is an environment variable, read once at start "
            "(`app/settings.py`); a value that cannot be used stops the start with an "
            "error naming the variable. This page is generated from the code.",
            "",
            "| variable | type | default | meaning |",
            "|---|---|---|---|",
            *rows,
            "",
            "## Object storage",
            "",
            "An `s3://` lake reads the standard AWS variables, as boto3 and the AWS CLI do:",
            "",
            "| variable |",
            "|---|",
            *aws,
            "",
        ]
    )


def write_openapi(docs_dir: Path) -> None:
    from app.api.app import create_app
    from app.settings import Settings

    document = create_app(Settings()).openapi_schema.to_schema()
    (docs_dir / "reference" / "openapi.json").write_text(json.dumps(document, indent=1) + "\n")


def on_pre_build(config: MkDocsConfig) -> None:
    write_openapi(Path(config.docs_dir))


def on_files(files: Files, config: MkDocsConfig) -> Files:
    files.append(File.generated(config, "reference/configuration.md", content=configuration_page()))
    return files
