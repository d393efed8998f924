"""Colours from the palette: the desktop's scheme (or a light, dark or high-contrast one), text
tones that keep a readable contrast on it, and focus rings on every control that takes focus.

No colour in the app is fixed: each is a hue pulled towards the palette's text colour until it
reads at WCAG AA (4.5:1) on every background it can stand on (window, base, alternate rows),
so the same code is right on a light, a dark and a high-contrast desktop.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum

from PySide6.QtCore import QObject, QRect, Qt
from PySide6.QtGui import QColor, QGuiApplication, QPainter, QPalette, QPen
from PySide6.QtWidgets import (
    QAbstractScrollArea,
    QApplication,
    QFrame,
    QProxyStyle,
    QStyle,
    QStyleFactory,
    QStyleOption,
    QStyleOptionComplex,
    QStyleOptionFrame,
    QWidget,
)

TEXT_CONTRAST = 4.5  # WCAG 2.x AA for body text
RING_CONTRAST = 3.0  # WCAG 2.2 focus appearance: the ring against what is next to it


class Scheme(StrEnum):
    DESKTOP = "desktop"  # whatever the platform says (Qt follows the desktop's light/dark)
    LIGHT = "light"
    DARK = "dark"
    HIGH_CONTRAST = "high-contrast"


class Hue(StrEnum):
    """What a colour means, as its hue on a white page; `tone` makes it readable on any."""

    SUCCESS = "#1e7b34"
    WARNING = "#b35c00"
    DANGER = "#a4262c"
    INFO = "#1f5fbf"
    SENT = "#e8710a"
    RECEIVED = "#2f7fe0"
    PURPLE = "#6a1b9a"
    TEAL = "#00695c"


# colour arithmetic


def luminance(colour: QColor) -> float:
    """WCAG relative luminance."""

    def linear(channel: float) -> float:
        return channel / 12.92 if channel <= 0.04045 else ((channel + 0.055) / 1.055) ** 2.4

    return (
        0.2126 * linear(colour.redF())
        + 0.7152 * linear(colour.greenF())
        + 0.0722 * linear(colour.blueF())
    )


def contrast(a: QColor, b: QColor) -> float:
    """WCAG contrast ratio, 1 to 21."""
    high, low = sorted((luminance(a), luminance(b)), reverse=True)
    return (high + 0.05) / (low + 0.05)


def mix(a: QColor, b: QColor, amount: float) -> QColor:
    """`a` moved `amount` (0 to 1) of the way to `b`."""
    return QColor.fromRgbF(
        a.redF() + (b.redF() - a.redF()) * amount,
        a.greenF() + (b.greenF() - a.greenF()) * amount,
        a.blueF() + (b.blueF() - a.blueF()) * amount,
    )


def is_dark(palette: QPalette) -> bool:
    return luminance(palette.color(QPalette.ColorRole.Window)) < 0.18


def backgrounds(palette: QPalette) -> tuple[QColor, ...]:
    """Everything text of the app's own can stand on: the window, views and alternate rows."""
    roles = (QPalette.ColorRole.Window, QPalette.ColorRole.Base, QPalette.ColorRole.AlternateBase)
    return tuple(palette.color(role) for role in roles)


def readable(colour: QColor, on: tuple[QColor, ...], ratio: float = TEXT_CONTRAST) -> QColor:
    """`colour`, moved towards black or white (whichever is away from the backgrounds) just
    far enough to reach `ratio` against each of `on`; as it is when it already does."""
    dark_ground = sum(luminance(c) for c in on) / len(on) < 0.18
    target = QColor("#ffffff") if dark_ground else QColor("#000000")
    for step in range(21):
        candidate = mix(colour, target, step / 20)
        if min(contrast(candidate, c) for c in on) >= ratio:
            return candidate
    return target


def tone(palette: QPalette, hue: Hue | str) -> QColor:
    """A meaningful colour (success, danger…) for text on this palette."""
    return readable(QColor(str(hue)), backgrounds(palette))


def muted(palette: QPalette) -> QColor:
    """Secondary text: the text colour faded towards the window as far as it stays readable
    (the palette's PlaceholderText is often below 4.5:1)."""
    text = palette.color(QPalette.ColorRole.WindowText)
    window = palette.color(QPalette.ColorRole.Window)
    for fade in (0.45, 0.4, 0.35, 0.3, 0.25, 0.2, 0.15, 0.1, 0.05):
        candidate = mix(text, window, fade)
        if min(contrast(candidate, c) for c in backgrounds(palette)) >= TEXT_CONTRAST:
            return candidate
    return text


def soft(palette: QPalette, hue: Hue | str, amount: float = 0.14) -> QColor:
    """A background tinted with `hue` (a note, the agent's words): the view colour a little
    of the way to the hue, so the text colour keeps its contrast on it."""
    base = palette.color(QPalette.ColorRole.Base)
    return mix(base, QColor(str(hue)), amount * (1.6 if is_dark(palette) else 1))


def edge(palette: QPalette, hue: Hue | str) -> QColor:
    """The border of a `soft` box: visible against the window (3:1 where it matters most,
    on a high-contrast palette; otherwise a clear line of the hue)."""
    window = palette.color(QPalette.ColorRole.Window)
    line = mix(palette.color(QPalette.ColorRole.Base), QColor(str(hue)), 0.55)
    return readable(line, (window,), RING_CONTRAST) if high_contrast(palette) else line


def high_contrast(palette: QPalette) -> bool:
    return (
        contrast(
            palette.color(QPalette.ColorRole.Window), palette.color(QPalette.ColorRole.WindowText)
        )
        >= 15
    )


def ring(palette: QPalette) -> QColor:
    """The focus ring: the highlight colour where it stands out from the window, else the
    text colour."""
    highlight = palette.color(QPalette.ColorRole.Highlight)
    grounds = tuple(
        palette.color(role)
        for role in (
            QPalette.ColorRole.Window,
            QPalette.ColorRole.Base,
            QPalette.ColorRole.Button,
            QPalette.ColorRole.Light,
        )
    )
    # Fusion lights buttons and the current tab up from the button colour, on dark the most.
    raised = palette.color(QPalette.ColorRole.Button).lighter(180)
    return readable(highlight, (*grounds, raised), RING_CONTRAST)


def box_sheet(name: str, palette: QPalette, hue: Hue | str) -> str:
    """A style sheet for a label shown as a tinted box (the summary, the agent's words)."""
    return (
        f"QLabel#{name} {{ background: {soft(palette, hue).name()};"
        f" border: 1px solid {edge(palette, hue).name()}; border-radius: 4px; padding: 8px;"
        f" color: {palette.color(QPalette.ColorRole.Text).name()}; }}"
    )


# palettes


def _palette(colours: dict[QPalette.ColorRole, str], disabled: str) -> QPalette:
    palette = QPalette()
    for role, colour in colours.items():
        palette.setColor(role, QColor(colour))
    for role in (
        QPalette.ColorRole.WindowText,
        QPalette.ColorRole.Text,
        QPalette.ColorRole.ButtonText,
    ):
        palette.setColor(QPalette.ColorGroup.Disabled, role, QColor(disabled))
    return palette


R = QPalette.ColorRole


def palette(scheme: Scheme) -> QPalette:
    """Airlock's own palettes, for the setting and for tests; DESKTOP is the platform's."""
    if scheme is Scheme.DESKTOP:
        return QGuiApplication.palette()
    if scheme is Scheme.LIGHT:
        return _palette(
            {
                R.Window: "#f2f3f5",
                R.WindowText: "#1b1f24",
                R.Base: "#ffffff",
                R.AlternateBase: "#f5f6f8",
                R.Text: "#1b1f24",
                R.Button: "#f7f8fa",
                R.ButtonText: "#1b1f24",
                R.BrightText: "#ffffff",
                R.Light: "#ffffff",
                R.Midlight: "#e4e6ea",
                R.Mid: "#b9bec6",
                R.Dark: "#8c939d",
                R.Shadow: "#3c4048",
                R.Highlight: "#2463c7",
                R.HighlightedText: "#ffffff",
                R.Accent: "#2463c7",
                R.Link: "#1a57b0",
                R.LinkVisited: "#6a3db5",
                R.ToolTipBase: "#ffffff",
                R.ToolTipText: "#1b1f24",
                R.PlaceholderText: "#646b75",
            },
            disabled="#8c939d",
        )
    if scheme is Scheme.DARK:
        return _palette(
            {
                R.Window: "#2a2c31",
                R.WindowText: "#e7e9ec",
                R.Base: "#1d1f23",
                R.AlternateBase: "#25272c",
                R.Text: "#e7e9ec",
                R.Button: "#373a40",
                R.ButtonText: "#e7e9ec",
                R.BrightText: "#ffffff",
                R.Light: "#4b4f57",
                R.Midlight: "#3d4047",
                R.Mid: "#2f3237",
                R.Dark: "#18191c",
                R.Shadow: "#000000",
                R.Highlight: "#2f6cc9",
                R.HighlightedText: "#ffffff",
                R.Accent: "#2f6cc9",
                R.Link: "#8ab4f8",
                R.LinkVisited: "#c58af9",
                R.ToolTipBase: "#373a40",
                R.ToolTipText: "#e7e9ec",
                R.PlaceholderText: "#a3a8b0",
            },
            disabled="#80858e",
        )
    return _palette(
        {
            R.Window: "#000000",
            R.WindowText: "#ffffff",
            R.Base: "#000000",
            R.AlternateBase: "#101010",
            R.Text: "#ffffff",
            R.Button: "#000000",
            R.ButtonText: "#ffffff",
            R.BrightText: "#ffffff",
            R.Light: "#1a1a1a",
            R.Midlight: "#1a1a1a",
            R.Mid: "#c0c0c0",
            R.Dark: "#ffffff",
            R.Shadow: "#ffffff",
            R.Highlight: "#1aebff",
            R.HighlightedText: "#000000",
            R.Accent: "#1aebff",
            R.Link: "#ffff00",
            R.LinkVisited: "#ffff00",
            R.ToolTipBase: "#000000",
            R.ToolTipText: "#ffffff",
            R.PlaceholderText: "#c0c0c0",
        },
        disabled="#a0a0a0",
    )


class AirlockStyle(QProxyStyle):
    """Fusion, with a focus ring where Fusion draws none or a faint one (buttons, tabs,
    list and table views and text panes: their frame carries it) and, on a high-contrast
    palette, controls outlined in the text colour (Fusion's outlines are the window colour,
    darker: black on black)."""

    OUTLINED = (
        QStyle.PrimitiveElement.PE_PanelButtonCommand,
        QStyle.PrimitiveElement.PE_IndicatorCheckBox,
        QStyle.PrimitiveElement.PE_FrameLineEdit,
        QStyle.PrimitiveElement.PE_Frame,
    )

    def __init__(self) -> None:
        super().__init__(QStyleFactory.create("Fusion"))

    def pixelMetric(
        self,
        metric: QStyle.PixelMetric,
        option: QStyleOption | None = None,
        widget: QWidget | None = None,
    ) -> int:
        if metric == QStyle.PixelMetric.PM_DefaultFrameWidth and isinstance(
            widget, QAbstractScrollArea
        ):
            return 2  # room for a 2 px ring outside the view's contents
        return super().pixelMetric(metric, option, widget)

    def drawControl(
        self,
        element: QStyle.ControlElement,
        option: QStyleOption,
        painter: QPainter,
        widget: QWidget | None = None,
    ) -> None:
        super().drawControl(element, option, painter, widget)
        focused = bool(option.state & QStyle.StateFlag.State_HasFocus)
        if element == QStyle.ControlElement.CE_ShapedFrame and isinstance(
            widget, QAbstractScrollArea
        ):
            if focused:
                draw_ring(painter, option.rect, option.palette, radius=2)
            elif (
                high_contrast(option.palette)
                and isinstance(option, QStyleOptionFrame)
                and option.frameShape != QFrame.Shape.NoFrame
            ):
                outline(painter, option.rect, option.palette)
        elif (
            element == QStyle.ControlElement.CE_TabBarTab
            and focused
            and option.state & QStyle.StateFlag.State_KeyboardFocusChange
        ):
            draw_ring(painter, option.rect.adjusted(1, 1, -1, 0), option.palette)  # Fusion's: 1.2:1
        elif (
            element == QStyle.ControlElement.CE_PushButtonBevel
            and focused
            and option.state & QStyle.StateFlag.State_KeyboardFocusChange
        ):
            # Fusion shows a focused button as it shows the default one (a blue outline):
            # the ring goes inside, so the one that has focus is told from the default.
            draw_ring(painter, option.rect.adjusted(1, 1, -1, -1), option.palette)

    def drawComplexControl(
        self,
        control: QStyle.ComplexControl,
        option: QStyleOptionComplex,
        painter: QPainter,
        widget: QWidget | None = None,
    ) -> None:
        super().drawComplexControl(control, option, painter, widget)
        fields = (QStyle.ComplexControl.CC_SpinBox, QStyle.ComplexControl.CC_ComboBox)
        if control not in fields:
            return
        if control == QStyle.ComplexControl.CC_SpinBox and high_contrast(option.palette):
            outline(painter, option.rect, option.palette)
        if option.state & QStyle.StateFlag.State_HasFocus:
            # Fusion's: its outline in a darker highlight, under 3:1 on dark and high contrast
            draw_ring(painter, option.rect, option.palette)

    def drawPrimitive(
        self,
        element: QStyle.PrimitiveElement,
        option: QStyleOption,
        painter: QPainter,
        widget: QWidget | None = None,
    ) -> None:
        if element == QStyle.PrimitiveElement.PE_FrameFocusRect:
            # Fusion's is a 1 px line of a darkened highlight; make it 2 px of the ring
            # colour (after a keyboard move, as Fusion does: a click shows no ring).
            if option.state & QStyle.StateFlag.State_KeyboardFocusChange:
                draw_ring(painter, option.rect, option.palette)
            return
        super().drawPrimitive(element, option, painter, widget)
        if element in self.OUTLINED and high_contrast(option.palette):
            outline(painter, option.rect, option.palette)
        elif element == QStyle.PrimitiveElement.PE_IndicatorCheckBox:
            # Fusion edges a check box in a darker button colour: on a dark palette an empty
            # one (a file not yet approved, a setting off) vanishes into its row.
            outline(painter, option.rect, option.palette, control_edge(option.palette))
        if (
            element == QStyle.PrimitiveElement.PE_FrameLineEdit
            and option.state & QStyle.StateFlag.State_HasFocus
        ):
            draw_ring(painter, option.rect, option.palette)


def control_edge(palette: QPalette) -> QColor:
    """The edge of a control that must be seen to be used (WCAG 1.4.11: 3:1 on its ground)."""
    text = palette.color(QPalette.ColorRole.WindowText)
    return readable(
        mix(text, palette.color(QPalette.ColorRole.Base), 0.5), backgrounds(palette), RING_CONTRAST
    )


def outline(
    painter: QPainter, rect: QRect, colours: QPalette, colour: QColor | None = None
) -> None:
    painter.save()
    painter.setPen(QPen(colour or colours.color(QPalette.ColorRole.WindowText), 1))
    painter.setBrush(Qt.BrushStyle.NoBrush)
    painter.drawRect(rect.adjusted(0, 0, -1, -1))
    painter.restore()


def draw_ring(painter: QPainter, rect: QRect, colours: QPalette, radius: float = 3) -> None:
    painter.save()
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    painter.setPen(QPen(ring(colours), 2))
    painter.setBrush(Qt.BrushStyle.NoBrush)
    painter.drawRoundedRect(rect.adjusted(1, 1, -1, -1), radius, radius)
    painter.restore()


def apply(app: QApplication, scheme: Scheme) -> None:
    """Airlock's style, with the desktop's palette or one of its own. Windows already open
    follow (see `follow`)."""
    if not isinstance(app.style(), AirlockStyle):
        app.setStyle(AirlockStyle())
    # A palette with nothing set is "no palette of ours": Qt's, from the platform theme,
    # which follows the desktop's light or dark scheme as it changes.
    app.setPalette(QPalette() if scheme is Scheme.DESKTOP else palette(scheme))


class _Follower(QObject):
    """Keeps a widget's style sheet computed from the application's palette."""

    def __init__(self, widget: QWidget, sheet: Callable[[QPalette], str]) -> None:
        super().__init__(widget)
        self._widget = widget
        self.sheet = sheet
        app = QGuiApplication.instance()
        assert isinstance(app, QGuiApplication)
        app.paletteChanged.connect(self.apply)

    def apply(self) -> None:
        self._widget.setStyleSheet(self.sheet(QGuiApplication.palette()))


def follow(widget: QWidget, sheet: Callable[[QPalette], str]) -> None:
    """Gives `widget` the style sheet `sheet(palette)`, now and whenever the palette
    changes (the desktop switched to dark, the user chose high contrast). Calling it again
    replaces the rule."""
    follower = widget.findChild(_Follower, options=Qt.FindChildOption.FindDirectChildrenOnly)
    if follower is None:
        follower = _Follower(widget, sheet)
    follower.sheet = sheet
    follower.apply()


def text_colour(widget: QWidget, colour: Callable[[QPalette], QColor], extra: str = "") -> None:
    """A label's text in `colour(palette)`, following the palette."""
    follow(widget, lambda p: f"color: {colour(p).name()};{extra}")
