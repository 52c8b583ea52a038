"""What the appliance shows: gpiozero LEDs, a status LED, an optional 7-segment display and buzzer.

``Outputs`` is built from the ``[outputs]`` config. On a Pi it drives real pins; off a Pi the
same gpiozero devices run on gpiozero's ``MockFactory`` and ``TerminalRenderer`` draws them on
one updating terminal line. ``snapshot()`` reads the devices' own values back (what the pins
are set to), for the state file and the screen.
"""

from __future__ import annotations

import contextlib
import sys

# Status LED patterns as (on seconds, off seconds); None = steady on.
STATUS_PATTERNS = {
    "starting": (0.1, 0.9),      # a short blink each second: waiting for the first frame
    "running": None,             # steady: all well
    "camera fault": (0.1, 0.1),  # fast flicker: no frames from the camera, retrying
    "model fault": (1.0, 1.0),   # slow blink: no usable model, retrying
}


class OutputError(RuntimeError):
    """The pins cannot be driven (gpiozero missing, no GPIO access, pin in use)."""


def mock_pin_factory():
    """gpiozero's MockFactory: pins that exist only in memory, for simulation and tests."""
    try:
        from gpiozero.pins.mock import MockFactory, MockPin
    except ImportError:
        raise OutputError("gpiozero is not installed: pip install 'cardcam[pi]' (also needed to simulate)") from None

    class SimulatedPin(MockPin):
        """A MockPin that forgets old states: MockPin records every change (for tests'
        assert_states), a list that grows without end in a simulation left running."""

        def _change_state(self, value):
            changed = super()._change_state(value)
            if len(self.states) > 64:
                del self.states[:-32]
            return changed

    return MockFactory(pin_class=SimulatedPin)


class Outputs:
    """One LED per label, a status LED, optional display and buzzer. Close turns everything off."""

    def __init__(self, leds: dict, status_led=None, active_high=True, display=(), display_active_high=True,
                 buzzer=None, beep_time=0.05, pin_factory=None):
        try:
            import gpiozero
        except ImportError:
            raise OutputError("gpiozero is not installed: pip install 'cardcam[pi]'") from None
        self.beep_time = beep_time
        self.status = "off"
        self.label = None
        self._stack = contextlib.ExitStack()
        made = self._stack.enter_context
        try:
            self.leds = {label: made(gpiozero.LED(pin, active_high=active_high, pin_factory=pin_factory))
                         for label, pin in leds.items()}
            self.status_led = made(gpiozero.LED(status_led, active_high=active_high, pin_factory=pin_factory)) \
                if status_led is not None else None
            self.display = None
            if display:
                segments, dp = list(display[:7]), (display[7] if len(display) == 8 else None)
                self.display = made(gpiozero.LEDCharDisplay(*segments, dp=dp, active_high=display_active_high,
                                                             pin_factory=pin_factory))
            self.buzzer = made(gpiozero.Buzzer(buzzer, pin_factory=pin_factory)) if buzzer is not None else None
        except gpiozero.GPIOZeroError as e:
            self._stack.close()
            raise OutputError(f"cannot set up the GPIO pins: {e}") from None
        except (OSError, RuntimeError) as e:  # /dev/gpiochip* permissions, no GPIO at all
            self._stack.close()
            raise OutputError(f"cannot use GPIO ({e}); is this user in the 'gpio' group?") from None

    @classmethod
    def from_config(cls, outputs, pin_factory=None) -> "Outputs":
        return cls(outputs.leds, outputs.status_led, outputs.active_high, outputs.display,
                   outputs.display_active_high, outputs.buzzer, outputs.beep_time, pin_factory)

    def show(self, label) -> None:
        """Light the label's LED (None: all class LEDs off) and put it on the display."""
        changed = label != self.label
        self.label = label
        for name, led in self.leds.items():
            led.value = name == label
        if self.display is not None:
            char = label if label is not None and len(label) == 1 else " "
            try:
                self.display.value = char
            except ValueError:  # a label the 7-segment font has no glyph for
                self.display.value = " "
        if changed and label is not None and self.buzzer is not None and self.beep_time > 0:
            self.buzzer.beep(self.beep_time, self.beep_time, n=1)

    def set_status(self, status: str) -> None:
        if status == self.status or self.status_led is None:
            self.status = status
            return
        self.status = status
        pattern = STATUS_PATTERNS.get(status)
        if status not in STATUS_PATTERNS:
            self.status_led.off()
        elif pattern is None:
            self.status_led.on()
        else:
            self.status_led.blink(*pattern)

    def flash(self, label=None, times: int = 3, on_time: float = 0.1) -> float:
        """Blink ``label``'s LED (None, or a label without one: the status LED) ``times`` times in
        the background, with the label on the display; returns how long that takes, after which
        refresh() puts back what is shown. Teach mode's way to say "stored", "learned", "refused"."""
        if self.display is not None and label is not None:
            with contextlib.suppress(ValueError):  # no glyph for it: the display keeps what it shows
                self.display.value = label if len(label) == 1 else " "
        led = self.leds.get(label) if label is not None else None
        led = led or self.status_led
        if led is None:
            return 0.0
        led.blink(on_time, on_time, n=times, background=True)
        return 2 * on_time * times

    def refresh(self) -> None:
        """Show again the label and status last set (after a flash)."""
        status, self.status = self.status, None
        self.set_status(status)
        label, self.label = self.label, None
        for name, led in self.leds.items():
            led.value = name == label
        self.label = label
        if self.display is not None:
            char = label if label is not None and len(label) == 1 else " "
            with contextlib.suppress(ValueError):
                self.display.value = char

    def off(self) -> None:
        """Every LED, segment and buzzer off (blinking stopped)."""
        self.show(None)
        self.status = "off"
        if self.status_led is not None:
            self.status_led.off()
        if self.display is not None:
            self.display.off()
        if self.buzzer is not None:
            self.buzzer.off()

    def snapshot(self) -> dict:
        """The values the devices hold now (1 = lit)."""
        return {
            "leds": {name: int(led.value) for name, led in self.leds.items()},
            "status_led": int(self.status_led.value) if self.status_led is not None else None,
            "status": self.status,
            "display": self.display.value if self.display is not None else None,
            "buzzer": int(self.buzzer.value) if self.buzzer is not None else None,
        }

    def close(self) -> None:
        try:
            self.off()
        finally:
            self._stack.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class TerminalRenderer:
    """The LEDs, label, confidence and fps on one line that rewrites itself; log lines go above it."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stdout
        self._line = ""

    def render(self, snapshot: dict, label, confidence, fps, model) -> None:
        leds = " ".join(f"{name}{'●' if on else '○'}" for name, on in snapshot["leds"].items())
        status = "●" if snapshot.get("status_led") else "○"
        shown = f"{label} {confidence:4.0%}" if label is not None else "no card"
        display = f"  [{snapshot['display']}]" if snapshot.get("display") is not None else ""
        self._line = (f"LEDs {leds}{display}  status {status} {snapshot['status']:<12}  → {shown:<10} "
                      f"{fps:6.1f} fps  model {model or '-'}")
        self.stream.write("\r\033[K" + self._line)
        self.stream.flush()

    def log(self, line: str) -> None:
        self.stream.write("\r\033[K" + line + "\n" + self._line)
        self.stream.flush()

    def close(self) -> None:
        if self._line:
            self.stream.write("\n")
            self.stream.flush()
        self._line = ""
