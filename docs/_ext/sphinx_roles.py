"""Griffe extension for the API reference: Sphinx conventions that Markdown does not know.

The docstrings are numpydoc and refer to other objects with Sphinx roles
(``:func:`iter_embedding```, ``:class:`~napari_phenotyper.core.batch.BatchRequest```).
MkDocs renders Markdown, where such a role would show up as ``:func:`` followed by code.
This extension rewrites each role, before the docstring is parsed, into an optional
mkdocs-autorefs reference: a link when the target is on the API page, plain code
otherwise (never a warning). Names are resolved like Sphinx does: as written, then
relative to the docstring's class and module. A paragraph ending in ``::`` before a
literal block ends in ``:``, as Sphinx shows it. Module constants documented with
Sphinx's ``#:`` comments get those comments as their docstrings.

Loaded by ``mkdocs.yml`` (``plugins.mkdocstrings.handlers.python.options.extensions``).
"""

from __future__ import annotations

import html
import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:func|meth|class|mod|attr|data|exc|obj|const):`(~?)\.?([^`<>]+)`")
_LITERAL = re.compile(r"(\S)::\n\n(?=[ \t])")


def _resolve(obj: griffe.Object, target: str) -> str:
    """Qualify a target written relative to ``obj``'s class or module."""
    if target.startswith("napari_phenotyper"):
        return target
    head, _, rest = target.partition(".")
    scope: Any = obj
    while scope is not None:
        member = scope.members.get(head)
        if member is not None:
            # a name imported into the module: link to where it is defined
            path = member.target_path if member.is_alias else member.path
            return f"{path}.{rest}" if rest else path
        scope = scope.parent
    return target


def _rewrite(obj: griffe.Object, text: str) -> str:
    def replace(match: re.Match[str]) -> str:
        short, target = match.group(1), match.group(2).strip()
        title = target.rsplit(".", 1)[-1] if short else target
        ident = html.escape(_resolve(obj, target), quote=True)
        return f'<autoref identifier="{ident}" optional><code>{html.escape(title)}</code></autoref>'

    text = _ROLE.sub(replace, text)
    # reST's "text::" before a literal block reads "text:" (the indented block is code in Markdown too)
    return _LITERAL.sub(r"\1:\n\n", text)


def _comment_docstring(obj: griffe.Object) -> str | None:
    """The Sphinx ``#:`` comment lines right above an attribute, if any."""
    try:
        lines = obj.module.lines
    except Exception:  # no source (a compiled module)
        return None
    found: list[str] = []
    i = (obj.lineno or 0) - 2  # the line above, 0-based
    while 0 <= i < len(lines) and lines[i].lstrip().startswith("#:"):
        found.insert(0, lines[i].lstrip()[2:].removeprefix(" "))
        i -= 1
    return "\n".join(found) if found else None


def _walk(obj: griffe.Object) -> None:
    if obj.docstring is None and obj.is_attribute:
        text = _comment_docstring(obj)
        if text:
            obj.docstring = griffe.Docstring(text, lineno=obj.lineno, parent=obj)
    if obj.docstring is not None and ":" in obj.docstring.value:
        obj.docstring.value = _rewrite(obj, obj.docstring.value)
    for member in obj.members.values():
        if not member.is_alias:
            _walk(member)


class SphinxRoles(griffe.Extension):
    """Rewrite Sphinx roles into optional autorefs references; read ``#:`` comments."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        # once the whole package is loaded, so that names used before their definition resolve
        _walk(pkg)

    def on_package_loaded(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        """The same event under its griffe 1.x name."""
        _walk(pkg)
