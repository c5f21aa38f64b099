"""All our docks open at once on a 1280x800 screen: tabbed together, scrollable, titles as typed.

Measured before (issue 13, "Fits a screen"): Segment & measure + Cell table + Phenotypes
needed 1871 px of height, 2419 with Plots; napari stacked them one under the other.
"""

from __future__ import annotations

import re

import numpy as np
from qtpy.QtWidgets import QAbstractButton, QDockWidget, QScrollArea, QTabBar

from napari_phenotyper._napari.phenotype_widget import PhenotypeWidget
from napari_phenotyper._napari.sample_data import nuclei_sample
from napari_phenotyper._napari.segment_widget import SegmentWidget

DOCKS = ["Segment & measure", "Cell table", "Phenotypes", "Plots", "Batch", "Fine-tune", "Gallery"]
LONE_AMPERSAND = re.compile(r"(?<!&)&(?!&)")  # Qt would show "Segment _measure"


def _ours(window):
    return [d for d in window.findChildren(QDockWidget) if d.property("napari_phenotyper_dock")]


def test_all_docks_open_fit_1280x800(make_napari_viewer, qtbot):
    viewer = make_napari_viewer(show=True)
    for data, kwargs, kind in nuclei_sample():
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    window = viewer.window._qt_window
    window.resize(1280, 800)
    widgets = {name: viewer.window.add_plugin_dock_widget("napari-phenotyper", name)[1] for name in DOCKS}
    qtbot.waitUntil(lambda: len(_ours(window)) == len(DOCKS), timeout=5000)
    qtbot.wait(50)

    # the window did not grow past the screen, and could not need to
    assert (window.width(), window.height()) == (1280, 800)
    hint = window.minimumSizeHint()
    assert hint.width() <= 1280 and hint.height() <= 800, (hint.width(), hint.height())
    docks = _ours(window)
    # one dock area, one tab each (the one opened last in front), short titles
    first = docks[0]
    assert {d.windowTitle() for d in [first, *window.tabifiedDockWidgets(first)]} == {
        n.replace("&", "&&") for n in DOCKS
    }
    tabs = [t for t in window.findChildren(QTabBar) if t.count() == len(DOCKS)]
    assert len(tabs) == 1
    assert [tabs[0].tabText(i) for i in range(tabs[0].count())] == [n.replace("&", "&&") for n in DOCKS]
    assert tabs[0].tabText(tabs[0].currentIndex()) == DOCKS[-1]
    for name in ("Segment & measure", "Phenotypes", "Batch", "Fine-tune"):
        inner = widgets[name]
        inner = getattr(inner, "native", inner)
        area = inner.findChild(QScrollArea)
        assert area is not None  # a long dock scrolls instead of growing the window
        assert not area.horizontalScrollBar().isVisible(), name  # never sideways (it was, by 2 px)
    for dock in docks:
        assert dock.height() <= 800
        # the widest dock leaves the canvas room
        assert dock.minimumSizeHint().width() <= 520
    # napari still finds our widgets behind the scroll areas (the menu opens the same one again)
    assert viewer.window.add_plugin_dock_widget("napari-phenotyper", "Phenotypes")[1] is widgets["Phenotypes"]
    assert isinstance(widgets["Segment & measure"], SegmentWidget)
    assert isinstance(widgets["Phenotypes"], PhenotypeWidget)
    # no "&" shown as a keyboard mnemonic on any of our buttons or tabs
    for dock in docks:
        for button in dock.findChildren(QAbstractButton):
            assert not LONE_AMPERSAND.search(button.text()), button.text()
    assert np.asarray(viewer.screenshot(canvas_only=False)).shape[:2] == (800, 1280)
    # napari finds a docked widget by the widget itself (scripts close docks this way)
    viewer.window.remove_dock_widget(widgets["Cell table"])
    viewer.window.remove_dock_widget(widgets["Segment & measure"].native)
    assert len([d for d in _ours(window) if not d.isHidden()]) == len(DOCKS) - 2


def test_a_dock_opened_alone_stays_where_napari_puts_it(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    dock, _widget = viewer.window.add_plugin_dock_widget("napari-phenotyper", "Cell table")
    qtbot.waitUntil(lambda: dock.property("napari_phenotyper_dock") is True, timeout=5000)
    window = viewer.window._qt_window
    assert window.tabifiedDockWidgets(dock) == []
    assert dock.windowTitle() == "Cell table"
    assert dock.toggleViewAction().text() == "Cell table (napari-phenotyper)"
