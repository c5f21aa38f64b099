"""The Plots dock's widgets and figures, built once (see :mod:`.plots_widget`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from magicgui.widgets import ComboBox
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.lines import Line2D
from matplotlib.widgets import LassoSelector, RectangleSelector
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

if TYPE_CHECKING:
    pass


from typing import TYPE_CHECKING

if TYPE_CHECKING:
    pass

from .plots_common import (
    TABS,
    _Plot,
)


class PlotsControls(QWidget):
    """The controls, tabs and scatter artists of the Plots dock."""

    # ---- UI ------------------------------------------------------------------------
    def _build(self) -> None:
        self.layer_combo = ComboBox(label="labels", choices=self._labels_choices)
        self.export_button = QPushButton("Export PNG/SVG…")
        self.export_button.clicked.connect(lambda: self._ask_export())
        top = QHBoxLayout()
        top.addWidget(QLabel("labels layer:"))
        top.addWidget(self.layer_combo.native, 1)
        top.addWidget(self.export_button)

        self.tabs = QTabWidget()
        self.plots: dict[str, _Plot] = {}
        for key, title in TABS.items():
            plot = _Plot(toolbar=key == "scatter")
            self.plots[key] = plot
            self.tabs.addTab(plot, title)
        self.tabs.currentChanged.connect(lambda _i: self.refresh())
        self.plots["confusion"].canvas.mpl_connect("button_press_event", self._on_confusion_click)

        # scatter controls
        sc = self.plots["scatter"]
        form = QFormLayout()
        axes = QHBoxLayout()
        self.x_combo, self.y_combo = QComboBox(), QComboBox()
        for combo in (self.x_combo, self.y_combo):
            combo.setMinimumContentsLength(10)
            combo.currentIndexChanged.connect(lambda _i: self._axes_changed())
            axes.addWidget(combo, 1)
        form.addRow("x, y", axes)
        self.color_combo = QComboBox()
        self.color_combo.currentIndexChanged.connect(lambda _i: self._mark("scatter"))
        form.addRow("colour by", self.color_combo)
        sel = QHBoxLayout()
        self.tool_combo = QComboBox()
        self.tool_combo.addItems(["Lasso", "Box"])
        self.tool_combo.setToolTip(
            "Drag to select cells; Shift adds to the selection, Ctrl/Alt removes; a click picks one."
        )
        self.tool_combo.currentIndexChanged.connect(lambda _i: self._activate_tool())
        self.clear_button = QPushButton("Clear")
        self.clear_button.clicked.connect(lambda: self.select_labels([]))
        sel.addWidget(self.tool_combo)
        sel.addWidget(self.clear_button)
        form.addRow("select", sel)
        ann = QHBoxLayout()
        self.annotate_button = QPushButton("Annotate selection as")
        self.annotate_button.clicked.connect(lambda: self.annotate_selection())
        self.class_combo = QComboBox()
        ann.addWidget(self.annotate_button)
        ann.addWidget(self.class_combo, 1)
        form.addRow(ann)
        sc.controls.addLayout(form)

        # histogram controls
        hi = self.plots["histogram"]
        hform = QFormLayout()
        self.hist_combo = QComboBox()
        self.hist_combo.currentIndexChanged.connect(lambda _i: self._mark("histogram"))
        hform.addRow("feature", self.hist_combo)
        hrow = QHBoxLayout()
        self.group_combo = QComboBox()
        self.group_combo.currentIndexChanged.connect(lambda _i: self._mark("histogram"))
        self.bins = QSpinBox()
        self.bins.setRange(2, 500)
        self.bins.setValue(40)
        self.bins.valueChanged.connect(lambda _v: self._mark("histogram"))
        self.density = QCheckBox("density")
        self.density.setChecked(True)
        self.density.setToolTip("Each class with unit area, so that classes of different sizes compare.")
        self.density.toggled.connect(lambda _v: self._mark("histogram"))
        hrow.addWidget(self.group_combo, 1)
        hrow.addWidget(QLabel("bins"))
        hrow.addWidget(self.bins)
        hrow.addWidget(self.density)
        hform.addRow("per", hrow)
        hi.controls.addLayout(hform)

        self.info = QLabel("")
        self.info.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(self.tabs, 1)
        layout.addWidget(self.info)

        # scatter artists, made once and updated in place
        fig = sc.figure
        self.ax = fig.add_axes((0.11, 0.11, 0.64, 0.83))
        self._cax = fig.add_axes((0.78, 0.11, 0.03, 0.83))
        self._mappable = ScalarMappable(norm=Normalize(0, 1), cmap=colormaps["viridis"])
        self._cbar = fig.colorbar(self._mappable, cax=self._cax)
        self._cax.set_visible(False)
        self._lines: list[Line2D] = []
        self._sel_line = Line2D(
            [], [], linestyle="none", marker="o", markerfacecolor="none", markeredgecolor="#D62728",
            markeredgewidth=1.2, zorder=5,
        )  # fmt: skip
        self.ax.add_line(self._sel_line)
        # The ring is drawn over a cached image of the plot (blitting): a new selection
        # redraws the ring only, not 100,000 points. It stays hidden in full draws and
        # is drawn after each by _on_scatter_drawn, connected before the selectors' own
        # draw handlers so that they find no visible extra artist (else they redraw).
        self._sel_line.set_visible(False)
        self._background: Any = None
        fig.canvas.mpl_connect("draw_event", self._on_scatter_drawn)
        self._message = self.ax.text(
            0.5, 0.5, "", transform=self.ax.transAxes, ha="center", va="center", wrap=True, zorder=6
        )
        self._lasso = LassoSelector(
            self.ax, self._on_lasso, useblit=True, props={"color": "#D62728", "linewidth": 1.0}
        )
        self._box = RectangleSelector(
            self.ax,
            self._on_box,
            useblit=True,
            button=[1],
            minspanx=-1,  # a click is a box too (it picks the nearest point)
            minspany=-1,
            spancoords="pixels",
            props={"facecolor": "#D62728", "alpha": 0.15, "edgecolor": "#D62728"},
            # Shift / Ctrl mean add / remove here, not "square" / "from the centre"
            state_modifier_keys={"square": "not-applicable", "center": "not-applicable"},
        )
        self._activate_tool()

    def _activate_tool(self) -> None:
        lasso = self.tool_combo.currentText() == "Lasso"
        self._lasso.set_active(lasso)
        self._box.set_active(not lasso)
