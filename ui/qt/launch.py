"""The "Launch an agent" dialog: which agent, what it may do, which files with which access,
why it cannot go yet, and how far the launch got (or why it failed and what to do next).

The dialog only shows and asks: Launch emits `launch_requested`, the app's controller
(ui/qt/app.py) reads `choice()` and reports back through `begin`, `step`, `failed` and
`succeeded`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QPalette, QShowEvent
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QFrame,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QScrollArea,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from app.grants import Mode
from app.profiles import Profile
from ui.launch_plan import STAGES, LaunchChoice, default_mode, powers, refusal, stage_of
from ui.qt.icons import icon
from ui.qt.screen import fit_on_screen

ACCESS = ((Mode.READ, "Read only"), (Mode.READ_WRITE, "Read and write"))
MARKS = {"done": "✓", "running": "…", "waiting": "○", "failed": "✗"}
PATH_ROLE = Qt.ItemDataRole.UserRole


def heading(text: str) -> QLabel:
    label = QLabel(text)
    font = label.font()
    font.setPointSizeF(font.pointSizeF() * 1.15)
    font.setBold(True)
    label.setFont(font)
    return label


def muted(text: str = "") -> QLabel:
    label = QLabel(text)
    label.setTextFormat(Qt.TextFormat.PlainText)
    label.setWordWrap(True)
    # The palette's own secondary colour, so that dark and high-contrast themes keep it legible.
    palette = label.palette()
    palette.setColor(
        QPalette.ColorRole.WindowText, palette.color(QPalette.ColorRole.PlaceholderText)
    )
    label.setPalette(palette)
    return label


class LaunchDialog(QDialog):
    """Pick an agent, see what it may do, pick files and their access, go."""

    launch_requested = Signal()

    def showEvent(self, event: QShowEvent) -> None:
        super().showEvent(event)
        fit_on_screen(self)

    def __init__(self, profiles: Sequence[Profile], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("launchDialog")
        self.setWindowTitle("Launch an agent")
        self.setWindowIcon(icon("airlock"))
        self.setMinimumWidth(640)
        self.profiles = {p.name: p for p in profiles}
        self.launching = False
        self._chosen: set[str] = set()  # paths whose access the user set by hand

        self.profile = QComboBox()
        self.profile.setObjectName("profile")
        self.profile.setPlaceholderText("Choose an agent…")
        for name in self.profiles:
            self.profile.addItem(name)
        self.profile.setCurrentIndex(-1)
        label = QLabel("&Agent:")
        label.setBuddy(self.profile)
        row = QHBoxLayout()
        row.addWidget(label)
        row.addWidget(self.profile, 1)
        self.description = QLabel()
        self.description.setObjectName("description")
        self.description.setTextFormat(Qt.TextFormat.PlainText)
        self.description.setWordWrap(True)
        self.powers_box = QGroupBox("What it may do")
        self.powers_form = QFormLayout(self.powers_box)
        self.powers_form.setRowWrapPolicy(QFormLayout.RowWrapPolicy.DontWrapRows)
        self.powers_form.setLabelAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        # A Tab stop that scrolls: the margin leaves room for its focus ring (ui/qt/theme.py).
        scroll.setViewportMargins(2, 2, 2, 2)
        scroll.setWidget(self.powers_box)
        scroll.setMinimumHeight(140)
        left = QVBoxLayout()
        left.addLayout(row)
        left.addWidget(self.description)
        left.addWidget(scroll, 1)

        self.files = QTreeWidget()
        self.files.setTabKeyNavigation(False)  # arrows move between rows; Tab leaves the view
        self.files.setObjectName("files")
        self.files.setColumnCount(2)
        self.files.setHeaderLabels(["File or folder", "Access"])
        self.files.setRootIsDecorated(False)
        self.files.setTextElideMode(Qt.TextElideMode.ElideMiddle)  # keep the name in view
        self.files.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.files.setMinimumHeight(140)
        header = self.files.header()
        header.setStretchLastSection(False)
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.ResizeToContents)
        files_label = QLabel("It will see only these &files and folders:")
        files_label.setBuddy(self.files)
        buttons = QHBoxLayout()
        self.add_files_button = QPushButton("Add f&iles…")
        self.add_folder_button = QPushButton("Add f&older…")
        self.remove_button = QPushButton("&Remove")
        for button in (self.add_files_button, self.add_folder_button, self.remove_button):
            buttons.addWidget(button)
        buttons.addStretch(1)
        right = QVBoxLayout()
        right.addWidget(files_label)
        right.addWidget(self.files, 1)
        right.addLayout(buttons)
        right.addWidget(
            muted("Read and write: the agent writes to copies; every change waits for your review.")
        )

        self.form = QWidget()
        columns = QHBoxLayout(self.form)
        columns.setContentsMargins(0, 0, 0, 0)
        columns.addLayout(left, 1)
        columns.addLayout(right, 1)

        self.why = muted()
        self.why.setObjectName("why")
        self.progress = QWidget()
        self.progress.setObjectName("progress")
        steps = QVBoxLayout(self.progress)
        steps.setContentsMargins(0, 0, 0, 0)
        steps.setSpacing(2)
        self.stage_labels = [QLabel() for _ in STAGES]
        for stage in self.stage_labels:
            stage.setTextFormat(Qt.TextFormat.PlainText)
            steps.addWidget(stage)
        self.progress.hide()
        self.error = QLabel()
        self.error.setObjectName("launchError")
        self.error.setTextFormat(Qt.TextFormat.PlainText)
        self.error.setWordWrap(True)
        self.error.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.error.hide()

        self.box = QDialogButtonBox(QDialogButtonBox.StandardButton.Cancel)
        self.cancel = self.box.button(QDialogButtonBox.StandardButton.Cancel)
        self.go = self.box.addButton("&Launch", QDialogButtonBox.ButtonRole.ActionRole)
        self.go.setObjectName("go")

        layout = QVBoxLayout(self)
        layout.setSpacing(10)
        layout.addWidget(heading("Launch an agent"))
        layout.addWidget(self.form, 1)
        layout.addWidget(self.why)
        layout.addWidget(self.progress)
        layout.addWidget(self.error)
        layout.addWidget(self.box)
        self.go.setDefault(True)  # once it is inside the dialog, which honours it

        self.box.rejected.connect(self.reject)
        self.go.clicked.connect(self._go)
        self.add_files_button.clicked.connect(self._add_files)
        self.add_folder_button.clicked.connect(self._add_folder)
        self.remove_button.clicked.connect(self._remove_selected)
        self.profile.currentIndexChanged.connect(self._profile_changed)
        self.finished.connect(self._closed)
        self._profile_changed()

    # what is chosen

    def current_profile(self) -> Profile | None:
        return self.profiles.get(self.profile.currentText())

    def select_profile(self, name: str) -> bool:
        index = self.profile.findText(name)
        if index >= 0:
            self.profile.setCurrentIndex(index)
        return index >= 0

    def add_path(self, path: Path, mode: Mode | None = None) -> None:
        """Lists `path` (once), with `mode` or the profile's default access."""
        if self.item_for(path) is not None:
            return
        item = QTreeWidgetItem([str(path), ""])
        item.setData(0, PATH_ROLE, str(path))
        item.setToolTip(0, str(path))
        self.files.addTopLevelItem(item)
        access = QComboBox()
        access.setObjectName(f"access-{path}")
        access.setAccessibleName(f"Access to {path.name or path}")
        for value, title in ACCESS:
            access.addItem(title, str(value))
        self.files.setItemWidget(item, 1, access)
        if mode is not None:
            self._chosen.add(str(path))
        self._set_access(item, mode or self._default_mode())
        access.activated.connect(lambda _=0, p=str(path): self._access_chosen(p))
        self._refresh()

    def _items(self) -> list[QTreeWidgetItem]:
        items = (self.files.topLevelItem(i) for i in range(self.files.topLevelItemCount()))
        return [item for item in items if item is not None]

    def item_for(self, path: Path) -> QTreeWidgetItem | None:
        for item in self._items():
            if item.data(0, PATH_ROLE) == str(path):
                return item
        return None

    def access(self, path: Path) -> QComboBox:
        item = self.item_for(path)
        assert item is not None, path
        widget = self.files.itemWidget(item, 1)
        assert isinstance(widget, QComboBox)
        return widget

    def mode_of(self, path: Path) -> Mode:
        return Mode(self.access(path).currentData())

    def set_mode(self, path: Path, mode: Mode) -> None:
        """As if the user chose `mode` for `path`."""
        self._chosen.add(str(path))
        item = self.item_for(path)
        assert item is not None
        self._set_access(item, mode)

    def paths(self) -> list[Path]:
        return [Path(item.data(0, PATH_ROLE)) for item in self._items()]

    def remove_path(self, path: Path) -> None:
        item = self.item_for(path)
        if item is not None:
            self.files.takeTopLevelItem(self.files.indexOfTopLevelItem(item))
            self._chosen.discard(str(path))
        self._refresh()

    def choice(self) -> LaunchChoice:
        return LaunchChoice(
            self.profile.currentText(), tuple((p, self.mode_of(p)) for p in self.paths())
        )

    def restore(self, choice: LaunchChoice) -> None:
        """Fills in a remembered (or prepared) choice; an agent that is gone is left out."""
        self.select_profile(choice.profile)
        for path, mode in choice.paths:
            self.add_path(path, mode)

    def power_rows(self) -> dict[str, str]:
        rows: dict[str, str] = {}
        for row in range(self.powers_form.rowCount()):
            title = self.powers_form.itemAt(row, QFormLayout.ItemRole.LabelRole)
            text = self.powers_form.itemAt(row, QFormLayout.ItemRole.FieldRole)
            if title is not None and text is not None:
                label, value = title.widget(), text.widget()
                assert isinstance(label, QLabel) and isinstance(value, QLabel)
                rows[label.text().removesuffix(":")] = value.text()
        return rows

    # the launch, as the controller reports it

    def begin(self) -> None:
        self.launching = True
        self.form.setEnabled(False)
        self.go.setEnabled(False)
        self.cancel.setText("&Close")
        self.cancel.setToolTip("Close this window; the launch goes on")
        self.error.hide()
        self.why.hide()
        self.progress.show()
        self._show_stage(0)

    def step(self, step: str) -> None:
        index = stage_of(step)
        if index >= 0 and self.launching:
            self._show_stage(index)

    def failed(self, message: str, next_step: str) -> None:
        self.launching = False
        for label in self.stage_labels:
            if label.text().startswith(MARKS["running"]):
                label.setText(MARKS["failed"] + label.text()[1:])
        self.error.setText(f"The agent did not start: {message}\n\nWhat to do: {next_step}")
        self.error.show()
        self.form.setEnabled(True)
        self.cancel.setText("Cancel")
        self.cancel.setToolTip("")
        self.go.setText("&Try again")
        self._refresh()
        if not self.isVisible():
            self.deleteLater()

    def succeeded(self) -> None:
        self.launching = False
        self._show_stage(len(STAGES))
        if self.isVisible():
            self.accept()
        else:
            self.deleteLater()

    # inside

    def _show_stage(self, current: int) -> None:
        for index, (label, (_, title)) in enumerate(zip(self.stage_labels, STAGES, strict=True)):
            state = "done" if index < current else "running" if index == current else "waiting"
            label.setText(f"{MARKS[state]}  {title}")

    def _default_mode(self) -> Mode:
        profile = self.current_profile()
        return default_mode(profile) if profile is not None else Mode.READ

    def _set_access(self, item: QTreeWidgetItem, mode: Mode) -> None:
        widget = self.files.itemWidget(item, 1)
        assert isinstance(widget, QComboBox)
        widget.setCurrentIndex(max(0, widget.findData(str(mode))))

    def _access_chosen(self, path: str) -> None:
        self._chosen.add(path)

    def _profile_changed(self) -> None:
        profile = self.current_profile()
        self.description.setText(profile.description if profile else "")
        while self.powers_form.rowCount():
            self.powers_form.removeRow(0)
        if profile is None:
            self.powers_form.addRow(muted("Choose an agent to see what it may do."))
        else:
            for title, text in powers(profile):
                value = QLabel(text)
                value.setTextFormat(Qt.TextFormat.PlainText)
                value.setWordWrap(True)
                value.setObjectName(f"power-{title}")
                value.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
                self.powers_form.addRow(QLabel(f"{title}:"), value)
            # Paths the user did not set by hand follow the agent's default.
            mode = default_mode(profile)
            for item in self._items():
                if item.data(0, PATH_ROLE) not in self._chosen:
                    self._set_access(item, mode)
        self._refresh()

    def _refresh(self) -> None:
        if self.launching:
            return
        entries = []
        for item in self._items():
            path = Path(item.data(0, PATH_ROLE))
            exists = path.exists()
            entries.append((path, exists))
            style = self.style()
            item.setIcon(
                0,
                style.standardIcon(
                    style.StandardPixmap.SP_MessageBoxWarning
                    if not exists
                    else style.StandardPixmap.SP_DirIcon
                    if path.is_dir()
                    else style.StandardPixmap.SP_FileIcon
                ),
            )
            item.setToolTip(0, str(path) if exists else f"{path} does not exist")
        why = refusal(self.profile.currentText() if self.current_profile() else "", entries)
        self.why.setText(why)
        self.why.setVisible(bool(why))
        self.go.setEnabled(not why)

    def _go(self) -> None:
        self._refresh()  # a path may have gone since it was added
        if self.go.isEnabled() and not self.launching:
            self.launch_requested.emit()

    def _remove_selected(self) -> None:
        for item in self.files.selectedItems():
            self.remove_path(Path(item.data(0, PATH_ROLE)))

    def _add_paths(self, files: list[str]) -> None:
        for file in files:
            self.add_path(Path(file))

    def _dialog(self, mode: QFileDialog.FileMode) -> QFileDialog:
        dialog = QFileDialog(self, "Choose what the agent may see", str(Path.home()))
        dialog.setOption(QFileDialog.Option.DontUseNativeDialog, True)
        dialog.setFileMode(mode)
        dialog.filesSelected.connect(self._add_paths)
        return dialog

    def _add_files(self) -> None:
        self._dialog(QFileDialog.FileMode.ExistingFiles).open()

    def _add_folder(self) -> None:
        self._dialog(QFileDialog.FileMode.Directory).open()

    def _closed(self) -> None:
        # While a launch goes on, the controller still reports to the dialog: it goes
        # once the launch has ended (`failed`, `succeeded`).
        if not self.launching:
            self.deleteLater()
