"""Pictures of rolls a musician can read: one drawing for TensorBoard, generate/decode --png and inspect.

Pitch goes up and time to the right. Faint vertical lines mark bar lines and short ticks the
beats, both from the roll's meter (4/4 at 4 steps per beat: a bar of 16 steps, beats of 4;
6/8: a bar of 12 steps, two dotted-quarter beats of 6) and from where its bars start (a
training window shifted by S steps from a bar line has its first bar line at -S mod bar). A
faint line runs under every C, labelled with its octave (C4 = MIDI 60) when a pitch is at
least two pixels tall. Binary rolls are two-tone, with onsets in a colour of their own when
the roll has an onset channel, and one colour per part when it has several parts (channels
part by part: sustain, then onset if any); probabilities go through a colour map, so 0.4 and
0.6 differ. A window's meter is the one in force at its start. numpy and Pillow only, so the
data commands draw without importing torch.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

BACKGROUND = (0, 0, 0)
BAR_LINE = (85, 85, 85)
BEAT_TICK = (60, 60, 60)
C_LINE = (28, 40, 90)
NOTE = (235, 235, 235)
ONSET = (255, 150, 40)
PART_COLOURS = [NOTE, (90, 200, 255), (120, 230, 120), (255, 120, 200)]  # part 0 (melody), 1, 2, 3, then again
PAD = (77, 77, 77)
LABEL = (150, 160, 210)
LABEL_WIDTH = 18  # pixels left of the roll for octave names
TICK = 3  # beat tick length in pixels, at the top and bottom edges
# viridis at five stops: dark purple (low) to yellow (high)
COLOUR_MAP = np.array([(68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)], float)


def colour_map(p: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> RGB uint8 [..., 3], interpolated between the map's stops."""
    x = np.clip(np.asarray(p, float), 0, 1) * (len(COLOUR_MAP) - 1)
    i = np.minimum(x.astype(int), len(COLOUR_MAP) - 2)
    f = (x - i)[..., None]
    return np.rint(COLOUR_MAP[i] * (1 - f) + COLOUR_MAP[i + 1] * f).astype(np.uint8)


def meter_steps(numerator: int, denominator: int, steps_per_beat: int) -> tuple[int, int]:
    """(bar, beat) in steps. A beat is the denominator's note, or three of them in a compound
    meter (6/8, 9/8, 12/8, 6/4): 4/4 at 4 steps per quarter is (16, 4), 6/8 is (12, 6), 3/8 is (6, 2)."""
    unit = steps_per_beat * 4 / denominator
    bar = max(int(round(numerator * unit)), 1)
    compound = numerator % 3 == 0 and numerator > 3
    return bar, max(int(round(unit * (3 if compound else 1))), 1)


def is_binary(rolls: np.ndarray) -> bool:
    return rolls.dtype == bool or bool(np.isin(rolls, (0, 1)).all())


def draw_roll(roll, *, low: int = 30, steps_per_beat: int = 4, meter=(4, 4), shift: int = 0, x_scale: int = 1,
              y_scale: int = 2, labels: bool = True, binary: bool | None = None, parts: int = 1) -> np.ndarray:
    """One roll [C, P, T] (or [P, T]) -> RGB image uint8 [H, W, 3].

    ``meter`` (numerator, denominator) and ``shift`` (the window starts ``shift`` steps after a
    bar line) place bar lines and beat ticks. Channels come part by part, each part's sustain
    channel first and its onset channel next when C = 2 x parts; probabilities are drawn from
    the first part's sustain channel (the melody), over the other parts' cells at p >= 0.5."""
    roll = np.asarray(roll)
    if roll.ndim == 2:
        roll = roll[None]
    c, p, t = roll.shape
    if parts < 1 or c % parts or c // parts not in (1, 2):
        raise ValueError(f"a roll of {c} channels cannot hold {parts} part(s) of sustain (and onset) channels")
    binary = is_binary(roll) if binary is None else binary
    per_part = c // parts
    img = np.zeros((p, t, 3), np.uint8)
    img[:] = BACKGROUND
    pitch = low + np.arange(p)[::-1]  # MIDI pitch of each image row, highest on top
    if binary:
        on = np.zeros((p, t), bool)
        for k in range(parts):  # later parts drawn over earlier ones where they meet
            part_on = roll[k * per_part][::-1] > 0.5
            img[part_on] = PART_COLOURS[k % len(PART_COLOURS)]
            if per_part > 1:
                struck = roll[k * per_part + 1][::-1] > 0.5
                img[struck] = ONSET
                part_on |= struck
            on |= part_on
    else:  # the melody's probabilities through the colour map, the other parts at p >= 0.5 in their colours
        on = np.zeros((p, t), bool)
        for k in range(1, parts):
            part_on = roll[k * per_part][::-1] >= 0.5
            img[part_on] = PART_COLOURS[k % len(PART_COLOURS)]
            on |= part_on
        sus = roll[0][::-1]
        mel = sus >= 0.02  # below that the guides show through
        img[mel] = colour_map(sus[mel])
        on |= mel
    img = img.repeat(y_scale, axis=0).repeat(x_scale, axis=1)
    on = on.repeat(y_scale, axis=0).repeat(x_scale, axis=1)
    for r in np.nonzero(pitch % 12 == 0)[0]:  # a line under every C: the lowest pixel line of its row
        y = (r + 1) * y_scale - 1
        img[y, ~on[y]] = C_LINE
    bar, beat = meter_steps(*meter, steps_per_beat)
    first = (-shift) % bar  # the window's first bar line
    for b in range(first, t, bar):
        if b:
            col = img[:, b * x_scale]
            col[~on[:, b * x_scale]] = BAR_LINE
    for b in range(first % beat, t, beat):
        if b and (b - first) % bar:
            for rows in (slice(0, TICK), slice(img.shape[0] - TICK, None)):
                seg = img[rows, b * x_scale]
                seg[~on[rows, b * x_scale]] = BEAT_TICK
    if labels and y_scale >= 2:
        img = _label_octaves(img, pitch, y_scale)
    return img


def _label_octaves(img: np.ndarray, pitch: np.ndarray, y_scale: int) -> np.ndarray:
    from PIL import Image, ImageDraw

    out = np.zeros((img.shape[0], LABEL_WIDTH + img.shape[1], 3), np.uint8)
    out[:] = BACKGROUND
    out[:, LABEL_WIDTH:] = img
    canvas = Image.fromarray(out)
    draw = ImageDraw.Draw(canvas)
    for r in np.nonzero(pitch % 12 == 0)[0]:
        text = f"C{pitch[r] // 12 - 1}"
        _, top, _, bottom = draw.textbbox((0, 0), text)
        line = (r + 1) * y_scale - 1
        y = line - bottom  # the ink ends just above the C line
        if y + top >= 0:
            draw.text((1, y), text, fill=LABEL)
    return np.asarray(canvas)


def grid(images: list[np.ndarray], nrow: int = 4, pad: int = 2) -> np.ndarray:
    """Images [H, W, 3] of one size -> one image, ``nrow`` to a row, with a grey border."""
    if not images:
        raise ValueError("no rolls to draw")
    h, w, _ = images[0].shape
    rows = -(-len(images) // nrow)
    cols = min(nrow, len(images))
    out = np.zeros((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), np.uint8)
    out[:] = PAD
    for i, im in enumerate(images):
        r, c = divmod(i, nrow)
        out[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = im
    return out


def draw_rolls(rolls, nrow: int = 4, *, meter=(4, 4), shift=0, binary: bool | None = None, **kw) -> np.ndarray:
    """Rolls [N, C, P, T] -> a grid image uint8 [H, W, 3]. ``meter`` is one (numerator, denominator)
    for all rolls or one per roll ([N, 2]); ``shift`` one for all or one per roll."""
    rolls = np.asarray(rolls.detach().cpu() if hasattr(rolls, "detach") else rolls)
    binary = is_binary(rolls) if binary is None else binary
    meters = np.asarray(meter, int).reshape(-1, 2)
    meters = np.broadcast_to(meters, (len(rolls), 2)) if len(meters) == 1 else meters
    shifts = np.broadcast_to(np.asarray(shift, int), (len(rolls),))
    if len(meters) != len(rolls):
        raise ValueError(f"{len(meters)} meters for {len(rolls)} rolls")
    return grid([draw_roll(r, meter=tuple(m), shift=int(s), binary=binary, **kw)
                 for r, m, s in zip(rolls, meters, shifts)], nrow)


def spec_look(spec) -> dict:
    """What a picture needs of a RollSpec: the pitch of the lowest row, the steps of a beat, the parts."""
    return {"low": spec.low, "steps_per_beat": spec.steps_per_beat, "parts": spec.parts}


def window_look(records: dict, idx) -> dict:
    """The meter and shift of shard windows ``idx``, as draw_rolls takes them."""
    idx = np.asarray(idx)
    return {"meter": np.stack([records["ts_num"][idx], records["ts_den"][idx]], 1), "shift": records["shift"][idx]}


def roll_grid(rolls, nrow: int = 4, **kw) -> np.ndarray:
    """The grid as TensorBoard takes it: uint8 [3, H, W]."""
    return draw_rolls(rolls, nrow, **kw).transpose(2, 0, 1)


def save_rolls_png(rolls, path, nrow: int = 4, **kw) -> None:
    from PIL import Image

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(draw_rolls(rolls, nrow, **kw)).save(str(path))
