"""The documentation builds without warnings, lists every page, and shows only images that exist."""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
SCRIPT = DOCS / "make_screenshots.py"

# ![alt](path "title") and <img src="path">; links into the web are not checked here
_MD_IMAGE = re.compile(r"!\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HTML_IMAGE = re.compile(r"<img\b[^>]*\bsrc=[\"']([^\"']+)[\"']", re.IGNORECASE)


def _images(text: str) -> list[str]:
    found = _MD_IMAGE.findall(text) + _HTML_IMAGE.findall(text)
    return [p for p in found if not re.match(r"^[a-z][a-z0-9+.-]*:", p, re.IGNORECASE)]


def _nav_pages(nav) -> list[str]:
    """Every page file named in mkdocs' ``nav`` (nested sections included)."""
    if isinstance(nav, str):
        return [] if re.match(r"^[a-z]+://", nav) else [nav]
    if isinstance(nav, list):
        return [page for item in nav for page in _nav_pages(item)]
    if isinstance(nav, dict):
        return [page for value in nav.values() for page in _nav_pages(value)]
    return []


def _config() -> dict:
    return yaml.safe_load((REPO / "mkdocs.yml").read_text(encoding="utf-8"))


def _screenshots() -> tuple[str, ...]:
    """``IMAGES`` of docs/make_screenshots.py, read without importing it (it imports napari)."""
    tree = ast.parse(SCRIPT.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "IMAGES" for t in node.targets
        ):
            return tuple(ast.literal_eval(node.value))
    raise AssertionError("docs/make_screenshots.py has no IMAGES tuple")


def test_mkdocs_build_strict(tmp_path):
    missing = [
        m for m in ("mkdocs", "mkdocstrings", "mkdocstrings_handlers.python", "material") if _missing(m)
    ]
    if "mkdocs" in missing:
        pytest.skip("mkdocs is not installed (pip install -e '.[docs]')")
    assert not missing, f"the docs need {missing}: pip install -e '.[docs]'"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # Material's notice about MkDocs 2.0
    out = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    site = tmp_path / "site"
    assert (site / "index.html").is_file()
    api = (site / "api" / "index.html").read_text(encoding="utf-8")
    # the API reference is generated from the docstrings, with Sphinx roles turned into links
    assert "napari_phenotyper.core.pipeline.iter_segment_and_measure" in api
    assert ":func:" not in api and ":class:" not in api


def _missing(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is None
    except ModuleNotFoundError:  # a parent package is missing
        return True


def test_every_page_is_in_the_nav():
    nav = _nav_pages(_config()["nav"])
    pages = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))
    assert sorted(set(nav)) == sorted(nav), "a page is listed twice in mkdocs.yml's nav"
    assert not sorted(set(pages) - set(nav)), "pages missing from mkdocs.yml's nav"
    assert not sorted(set(nav) - set(pages)), "pages in mkdocs.yml's nav that do not exist"


def test_every_image_exists():
    for page in sorted(DOCS.rglob("*.md")):
        for ref in _images(page.read_text(encoding="utf-8")):
            target = (page.parent / ref.split("#")[0]).resolve()
            assert target.is_file(), f"{page.relative_to(REPO)} shows {ref}, which does not exist"


def test_screenshots_come_from_the_script():
    made = set(_screenshots())
    present = {p.name for p in (DOCS / "images").glob("*.png")}
    assert made <= present, f"run docs/make_screenshots.py: missing {sorted(made - present)}"
    assert present <= made, (
        f"{sorted(present - made)} in docs/images are not made by docs/make_screenshots.py: "
        "screenshots must be reproducible, add a step to the script"
    )
    used = {
        Path(ref).name for page in DOCS.rglob("*.md") for ref in _images(page.read_text(encoding="utf-8"))
    }
    assert made <= used, f"screenshots no page shows: {sorted(made - used)}"


def test_readme_top_image_is_a_screenshot():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    top = text.split("\n## ", 1)[0]  # before the first section
    images = _images(top)
    assert images, "the README shows no image before its first section"
    path = REPO / images[0]
    assert path.is_file(), f"the README's top image {images[0]} does not exist"
    assert path.parent == DOCS / "images" and path.name in _screenshots(), (
        f"the README's top image {images[0]} should be one of docs/make_screenshots.py's screenshots"
    )


def test_readme_links_into_docs_exist():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    for ref in re.findall(r"\]\((docs/[^)#\s]+)", text):
        assert (REPO / ref).exists(), f"the README links to {ref}, which does not exist"


def test_the_setup_script_installs_a_qt_binding_for_the_guides_napari():
    """README and the guide say `bash scripts/setup.sh`, then `.venv/bin/napari`: napari
    stops without a Qt binding, so the script must install the `qt` extra (a new user
    met that ImportError)."""
    guide = (DOCS / "getting-started.md").read_text(encoding="utf-8")
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "scripts/setup.sh`, then `.venv/bin/napari`" in guide
    assert "`.venv/bin/napari`" in readme
    script = (REPO / "scripts" / "setup.sh").read_text(encoding="utf-8")
    extras = re.findall(r'^\s*extras="([^"]+)"', script, re.MULTILINE)
    assert extras and all("qt" in e.split(",") for e in extras), extras
    assert "--compile-bytecode" in script  # no first-import compile of napari, pandas, ...
    with open(REPO / "pyproject.toml", "rb") as f:
        import tomllib

        qt = tomllib.load(f)["project"]["optional-dependencies"]["qt"]
    assert any(dep.lower().startswith(("pyqt", "pyside")) for dep in qt), qt
