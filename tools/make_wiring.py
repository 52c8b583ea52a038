"""Draw docs/wiring.png: the Pi's 40-pin header and what cardcam connects to it.

The LED pins are the defaults of device/config.py (what a fresh /etc/cardcam/config.toml uses);
the button and the 7-segment display are optional and use the pins README.md suggests
(OPTIONAL_BUTTON, OPTIONAL_DISPLAY below). Rebuild with:

    .venv/bin/python tools/make_wiring.py [--out docs/wiring.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from device.config import defaults

REPO = Path(__file__).resolve().parent.parent
OPTIONAL_BUTTON = 26  # [capture] button = 26: next to a ground pin (39)
OPTIONAL_DISPLAY = [18, 23, 24, 25, 12, 16, 20]  # [outputs] display = segments a..g
# BCM GPIO number -> physical pin on the 40-pin header; the rest are power and ground.
GPIO_PIN = {2: 3, 3: 5, 4: 7, 17: 11, 27: 13, 22: 15, 10: 19, 9: 21, 11: 23, 0: 27, 5: 29, 6: 31, 13: 33, 19: 35,
            26: 37, 14: 8, 15: 10, 18: 12, 23: 16, 24: 18, 25: 22, 8: 24, 7: 26, 1: 28, 12: 32, 16: 36, 20: 38, 21: 40}
POWER = {1: "3V3", 17: "3V3", 2: "5V", 4: "5V"}
GROUND = {6, 9, 14, 20, 25, 30, 34, 39}
LED_COLOURS = [(220, 40, 40), (40, 170, 60), (240, 190, 20), (40, 110, 220)]

W, H = 1500, 1000
ODD_X, EVEN_X, TOP, ROW = 690, 730, 175, 40


def font(size, bold=False):
    name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
    for folder in ("/usr/share/fonts/truetype/dejavu", "/usr/share/fonts/dejavu"):
        try:
            return ImageFont.truetype(f"{folder}/{name}", size)
        except OSError:
            pass
    return ImageFont.load_default(size)


def pin_xy(pin: int) -> tuple[int, int]:
    return (ODD_X if pin % 2 else EVEN_X), TOP + (pin - 1) // 2 * ROW


def gpio_of(pin: int):
    return next((g for g, p in GPIO_PIN.items() if p == pin), None)


def wire(d, points, colour, width=4):
    d.line(points, fill=colour, width=width, joint="curve")


def resistor(d, x, y, f):
    """A resistor between x and x+60 on the line y."""
    d.rectangle([x, y - 9, x + 60, y + 9], fill="white", outline="black", width=2)
    d.text((x + 30, y - 12), "330 Ω", font=f, fill="black", anchor="md")


def led(d, x, y, colour, label, f, pointing_left=True):
    """An LED whose anode is at x+40 and cathode at x (current flows right to left)."""
    tip, base = (x + 8, x + 36) if pointing_left else (x + 36, x + 8)
    d.polygon([(base, y - 14), (base, y + 14), (tip, y)], fill=colour, outline="black")
    d.line([(tip, y - 14), (tip, y + 14)], fill="black", width=3)
    d.text((x - 55, y - 5), label, font=f, fill="black", anchor="md")


def draw(out: Path) -> None:
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    f, small, big = font(17), font(14), font(26, bold=True)
    leds = defaults().outputs.leds
    status = defaults().outputs.status_led
    d.text((W // 2, 20), "cardcam wiring", font=big, fill="black", anchor="ma")
    d.text((W // 2, 58), f"Defaults from device/config.py: LEDs {', '.join(f'{k} on GPIO{v}' for k, v in leds.items())}, "
           f"status on GPIO{status}; each through 330 Ω to ground (GND).", font=f, fill="black", anchor="ma")
    d.text((W // 2, 84), "Optional: a button (cardcam capture) and a common-cathode 7-segment display. "
           "Camera: ribbon cable in the CAMERA connector.", font=f, fill="black", anchor="ma")

    # The header: a board-coloured block, pin 1 at the top left.
    d.rounded_rectangle([ODD_X - 28, TOP - 30, EVEN_X + 28, TOP + 19 * ROW + 30], 10, fill=(20, 90, 50))
    d.text(((ODD_X + EVEN_X) // 2, TOP - 52), "Pi header (GPIO numbers are BCM)", font=small, fill="black",
           anchor="ma")

    used = {}  # physical pin -> wire colour
    gnd_x = 150
    # --- left: the LEDs, the button and the ground rail -------------------------------------------------
    rail_top, rail_bottom = pin_xy(9)[1], pin_xy(39)[1]
    wire(d, [(gnd_x, rail_top), (gnd_x, rail_bottom)], "black", 5)
    d.text((gnd_x - 10, (rail_top + rail_bottom) // 2), "GND", font=f, fill="black", anchor="rm")
    for pin in (9, 39):
        wire(d, [pin_xy(pin), (gnd_x, pin_xy(pin)[1])], "black")
        used[pin] = "black"
    rows = [(f"LED {label}", gpio, LED_COLOURS[i % len(LED_COLOURS)]) for i, (label, gpio) in enumerate(leds.items())]
    rows.append(("status LED", status, (120, 120, 120)))
    for name, gpio, colour in rows:
        pin = GPIO_PIN[int(gpio)]
        x, y = pin_xy(pin)
        y_wire = y if pin not in (9, 39) else y + ROW // 2
        wire(d, [(x, y), (x - 40, y), (x - 40, y_wire), (420, y_wire)], colour)
        d.text((560, y_wire - 6), f"GPIO{gpio} (pin {pin})", font=small, fill="black", anchor="md")
        resistor(d, 360, y_wire, small)
        wire(d, [(360, y_wire), (300, y_wire)], colour)
        led(d, 260, y_wire, colour, name, small)
        wire(d, [(260, y_wire), (gnd_x, y_wire)], "black")
        used[pin] = colour
    # The button: GPIO26 (pin 37) to ground (pin 39); gpiozero's pull-up makes the pin read pressed.
    pin = GPIO_PIN[OPTIONAL_BUTTON]
    x, y = pin_xy(pin)
    colour = (150, 60, 170)
    wire(d, [(x, y), (340, y)], colour)
    d.text((560, y - 6), f"GPIO{OPTIONAL_BUTTON} (pin {pin})", font=small, fill="black", anchor="md")
    d.ellipse([330, y - 5, 340, y + 5], fill="black")
    d.ellipse([260, y - 5, 270, y + 5], fill="black")
    d.line([(262, y - 22), (338, y - 22)], fill="black", width=4)
    d.line([(300, y - 22), (300, y - 34)], fill="black", width=4)
    d.text((300, y + 10), "button (optional)", font=small, fill="black", anchor="ma")
    wire(d, [(260, y), (gnd_x, y)], "black")
    used[pin] = colour

    # --- right: the 7-segment display ------------------------------------------------------------------
    box = (1230, 300, 1400, 620)
    d.rounded_rectangle(box, 12, fill=(30, 30, 30))
    sx, sy, sw, sh = 1275, 340, 80, 120  # the "8"
    segs = {"a": [(sx, sy), (sx + sw, sy)], "b": [(sx + sw, sy), (sx + sw, sy + sh)],
            "c": [(sx + sw, sy + sh), (sx + sw, sy + 2 * sh)], "d": [(sx, sy + 2 * sh), (sx + sw, sy + 2 * sh)],
            "e": [(sx, sy + sh), (sx, sy + 2 * sh)], "f": [(sx, sy), (sx, sy + sh)], "g": [(sx, sy + sh), (sx + sw, sy + sh)]}
    for name, line in segs.items():
        d.line(line, fill=(230, 50, 40), width=9)
    for name, ((x0, y0), (x1, y1)) in segs.items():
        d.text(((x0 + x1) // 2 + (10 if x0 == x1 else 0), (y0 + y1) // 2 - (14 if y0 == y1 else 0)), name,
               font=small, fill="white", anchor="lm" if x0 == x1 else "md")
    d.text(((box[0] + box[2]) // 2, box[3] + 8), "7-segment display\n(optional, common cathode)", font=small,
           fill="black", anchor="ma", align="center")
    blue = (40, 110, 220)
    for k, (name, gpio) in enumerate(zip("abcdefg", OPTIONAL_DISPLAY)):
        pin = GPIO_PIN[gpio]
        x, y = pin_xy(pin)
        entry_y = box[1] + 30 + k * 40
        channel = 1080 + k * 16
        wire(d, [(x, y), (940, y)], blue, 3)
        d.text((845, y - 6), f"GPIO{gpio} (pin {pin})", font=small, fill="black", anchor="md")
        resistor(d, 940, y, small)
        wire(d, [(1000, y), (channel, y), (channel, entry_y), (box[0], entry_y)], blue, 3)
        d.text((box[0] - 6, entry_y - 4), name, font=small, fill="black", anchor="rd")
        used[pin] = blue
    pin = 34
    x, y = pin_xy(pin)
    wire(d, [(x, y), (1205, y), (1205, box[3] - 20), (box[0], box[3] - 20)], "black")
    d.text((775, y - 6), "GND (pin 34): common cathode", font=small, fill="black", anchor="ld")
    used[pin] = "black"

    # --- the pins on top of the wires -----------------------------------------------------------------
    for pin in range(1, 41):
        x, y = pin_xy(pin)
        fill = used.get(pin) or ((230, 130, 0) if POWER.get(pin) == "3V3" else (200, 30, 30) if pin in POWER
                                 else (0, 0, 0) if pin in GROUND else (180, 180, 180))
        d.ellipse([x - 11, y - 11, x + 11, y + 11], fill=fill, outline="white", width=2)
        d.text((x, y), str(pin), font=font(10), fill="white", anchor="mm")
    out.parent.mkdir(parents=True, exist_ok=True)
    img.save(out, optimize=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "wiring.png")
    args = parser.parse_args()
    draw(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
