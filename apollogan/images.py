"""Pictures of rolls a musician can read: one drawing for TensorBoard, generate/decode --png and inspect.

Pitch goes up and time to the right. Faint vertical lines mark bar lines (from the meter:
16 steps in 4/4 at 4 steps per beat, 12 in 6/8) and short ticks the beats; a faint line runs
under every C, labelled with its octave (C4 = MIDI 60) where the image is tall enough.
Binary rolls are two-tone, with onsets in a colour of their own when the roll has an onset
channel, and one colour per part when it has several parts (channels grouped part by part:
sustain, then onset if any); probabilities go through a colour map, so 0.4 and 0.6 differ. numpy and Pillow
only, so the data commands draw without importing torch.
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


def is_binary(rolls: np.ndarray) -> bool:
    return rolls.dtype == bool or bool(np.isin(rolls, (0, 1)).all())


def draw_roll(roll, *, low: int = 30, steps_per_beat: int = 4, bar: int = 16, x_scale: int = 1, y_scale: int = 2,
              labels: bool = True, binary: bool | None = None, parts: int = 1) -> np.ndarray:
    """One roll [C, P, T] (or [P, T]) -> RGB image uint8 [H, W, 3].

    Channels come part by part, each part's sustain channel first and its onset channel next
    when C = 2 x parts. Probabilities are drawn from the first part's sustain channel."""
    roll = np.asarray(roll)
    if roll.ndim == 2:
        roll = roll[None]
    binary = is_binary(roll) if binary is None else binary
    per_part = roll.shape[0] // parts
    _, p, t = roll.shape
    sus = roll[0][::-1]  # highest pitch on top
    img = np.zeros((p, t, 3), np.uint8)
    img[:] = BACKGROUND
    pitch = low + np.arange(p)[::-1]  # MIDI pitch of each image row
    beats = np.arange(0, t, steps_per_beat)
    bars = np.arange(bar, t, bar) if bar > 0 else np.array([], int)
    if binary:
        on = np.zeros((p, t), bool)
        for k in range(parts):  # later parts drawn over earlier ones where they meet
            part_on = roll[k * per_part][::-1] > 0.5
            img[part_on] = PART_COLOURS[k % len(PART_COLOURS)]
            if per_part > 1:
                part_on = part_on | (roll[k * per_part + 1][::-1] > 0.5)
                img[roll[k * per_part + 1][::-1] > 0.5] = ONSET
            on |= part_on
    else:
        on = sus >= 0.02  # below that the guides show through
        img[on] = colour_map(sus[on])
    img = img.repeat(y_scale, axis=0).repeat(x_scale, axis=1)
    on = on.repeat(y_scale, axis=0).repeat(x_scale, axis=1)
    for r in np.nonzero(pitch % 12 == 0)[0]:  # a line under every C: the lowest pixel line of its row
        y = (r + 1) * y_scale - 1
        img[y, ~on[y]] = C_LINE
    for b in bars:
        col = img[:, b * x_scale]
        col[~on[:, b * x_scale]] = BAR_LINE
    for b in beats[1:]:
        if b % bar:
            for rows in (slice(0, TICK), slice(img.shape[0] - TICK, None)):
                seg = img[rows, b * x_scale]
                seg[~on[rows, b * x_scale]] = BEAT_TICK
    if labels and y_scale * 12 >= 12:
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
        y = (r + 1) * y_scale - 1 - 8  # text ends on the C line
        if y >= 0:
            draw.text((1, y), f"C{pitch[r] // 12 - 1}", fill=LABEL)
    return np.asarray(canvas)


def grid(images: list[np.ndarray], nrow: int = 4, pad: int = 2) -> np.ndarray:
    """Images [H, W, 3] of one size -> one image, ``nrow`` to a row, with a grey border."""
    h, w, _ = images[0].shape
    rows = -(-len(images) // nrow)
    cols = min(nrow, len(images))
    out = np.zeros((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), np.uint8)
    out[:] = PAD
    for i, im in enumerate(images):
        r, c = divmod(i, nrow)
        out[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = im
    return out


def draw_rolls(rolls, nrow: int = 4, *, bar=16, binary: bool | None = None, **kw) -> np.ndarray:
    """Rolls [N, C, P, T] -> a grid image uint8 [H, W, 3]; ``bar`` steps per bar, one for all or one per roll."""
    rolls = np.asarray(rolls.detach().cpu() if hasattr(rolls, "detach") else rolls)
    binary = is_binary(rolls) if binary is None else binary
    bars = np.broadcast_to(np.asarray(bar), (len(rolls),))
    return grid([draw_roll(r, bar=int(b), binary=binary, **kw) for r, b in zip(rolls, bars)], nrow)


def roll_grid(rolls, nrow: int = 4, **kw) -> np.ndarray:
    """The grid as TensorBoard takes it: uint8 [3, H, W]."""
    return draw_rolls(rolls, nrow, **kw).transpose(2, 0, 1)


def save_rolls_png(rolls, path, nrow: int = 4, **kw) -> None:
    from PIL import Image

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(draw_rolls(rolls, nrow, **kw)).save(str(path))
