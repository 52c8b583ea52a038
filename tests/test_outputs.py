"""gpiozero outputs on MockFactory pins: what the pins are set to, not what our code says."""

import io
import time

import pytest
from gpiozero.pins.mock import MockFactory

from device.outputs import Outputs, TerminalRenderer


@pytest.fixture
def factory():
    return MockFactory()


def pin_states(factory, *pins):
    return [int(factory.pin(p).state) for p in pins]


def test_one_led_per_label(factory):
    with Outputs({"0": 17, "1": 27}, status_led=22, pin_factory=factory) as out:
        out.show("1")
        assert pin_states(factory, 17, 27) == [0, 1]
        out.show("0")
        assert pin_states(factory, 17, 27) == [1, 0]
        out.show(None)
        assert pin_states(factory, 17, 27) == [0, 0]
        out.show("happy")  # a label with no LED: nothing lit, nothing breaks
        assert pin_states(factory, 17, 27) == [0, 0]


def test_active_low_wiring_inverts_the_pins(factory):
    with Outputs({"0": 17, "1": 27}, active_high=False, pin_factory=factory) as out:
        out.show("0")
        assert pin_states(factory, 17, 27) == [0, 1]


def test_status_led_steady_when_running_and_blinking_on_faults(factory):
    with Outputs({"0": 17}, status_led=22, pin_factory=factory) as out:
        out.set_status("running")
        assert pin_states(factory, 22) == [1]
        out.set_status("camera fault")
        seen = set()
        end = time.monotonic() + 0.6
        while time.monotonic() < end and len(seen) < 2:
            seen.add(int(factory.pin(22).state))
            time.sleep(0.01)
        assert seen == {0, 1}  # blinking


def test_camera_and_model_faults_blink_differently(factory):
    def toggles(status):
        f = MockFactory()
        with Outputs({"0": 17}, status_led=22, pin_factory=f) as out:
            out.set_status(status)
            time.sleep(1.1)
            return len(f.pin(22).states)
    assert toggles("camera fault") > 2 * toggles("model fault")


def test_display_shows_the_digit(factory):
    segments = [5, 6, 12, 13, 16, 19, 20]
    with Outputs({"0": 17, "1": 27}, display=segments, pin_factory=factory) as out:
        out.show("1")
        assert pin_states(factory, *segments) == [0, 1, 1, 0, 0, 0, 0]  # segments b and c
        out.show("happy")  # no glyph for that: blank
        assert pin_states(factory, *segments) == [0] * 7
        out.show("0")
        assert pin_states(factory, *segments) == [1, 1, 1, 1, 1, 1, 0]


def test_buzzer_beeps_once_on_a_new_label(factory):
    with Outputs({"0": 17}, buzzer=18, beep_time=0.03, pin_factory=factory) as out:
        out.show("0")
        time.sleep(0.2)
        beeps = [s for _, s in factory.pin(18).states if s]
        out.show("0")  # the same label again: no beep
        time.sleep(0.1)
        assert beeps and [s for _, s in factory.pin(18).states if s] == beeps
        assert pin_states(factory, 18) == [0]


def test_close_turns_everything_off(factory):
    out = Outputs({"0": 17, "1": 27}, status_led=22, display=[5, 6, 12, 13, 16, 19, 20], buzzer=18,
                  pin_factory=factory)
    out.show("0")
    out.set_status("camera fault")
    out.buzzer.on()
    out.close()
    time.sleep(0.25)  # a blink thread that survived would switch the LED on again
    assert pin_states(factory, 17, 27, 22, 18, 5, 6, 12, 13, 16, 19, 20) == [0] * 11
    assert out.leds["0"].closed and out.status_led.closed


def test_snapshot_reads_the_devices(factory):
    with Outputs({"0": 17, "1": 27}, status_led=22, display=[5, 6, 12, 13, 16, 19, 20], pin_factory=factory) as out:
        out.show("1")
        out.set_status("running")
        assert out.snapshot() == {"leds": {"0": 0, "1": 1}, "status_led": 1, "status": "running", "display": "1",
                                  "buzzer": None}


def test_pin_conflicts_are_reported_not_raised_raw(factory):
    from device.outputs import OutputError
    with pytest.raises(OutputError, match="cannot set up the GPIO pins"):
        Outputs({"0": 17, "1": 17}, pin_factory=factory)
    # and nothing was left holding pin 17
    Outputs({"0": 17}, pin_factory=factory).close()


def test_terminal_renderer_draws_one_line_and_logs_above_it():
    stream = io.StringIO()
    r = TerminalRenderer(stream)
    snap = {"leds": {"0": 0, "1": 1}, "status_led": 1, "status": "running", "display": None}
    r.render(snap, "1", 0.97, 29.8, "digits01")
    r.log("12:00:00 shows 1 (97%)")
    r.close()
    text = stream.getvalue()
    assert "\n" not in text.split("12:00:00")[0]  # the status line rewrites itself (\r), no newline
    assert "0○ 1●" in text and "1  97%" in text and "29.8 fps" in text and "digits01" in text
    assert text.count("LEDs") == 2  # redrawn under the log line
    assert text.endswith("\n")
