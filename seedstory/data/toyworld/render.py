"""Paint a frame: a flat scene colour and each character as a flat shape in its slot."""

from __future__ import annotations

from PIL import Image, ImageDraw

from seedstory.data.toyworld.world import CHARACTER_BY_NAME, POSITIONS, SCENE_BY_NAME, FrameState

HALF_EXTENT = {"small": 0.09, "big": 0.15}
GROUND_Y = 0.55


def slot_centre(position: str, image_size: int) -> tuple[float, float]:
    return (POSITIONS.index(position) + 0.5) * image_size / len(POSITIONS), GROUND_Y * image_size


def draw_character(draw: ImageDraw.ImageDraw, name: str, position: str, size: str, image_size: int) -> None:
    character = CHARACTER_BY_NAME[name]
    cx, cy = slot_centre(position, image_size)
    r = HALF_EXTENT[size] * image_size
    box = (cx - r, cy - r, cx + r, cy + r)
    if character.shape == "circle":
        draw.ellipse(box, fill=character.rgb)
    elif character.shape == "square":
        draw.rectangle(box, fill=character.rgb)
    elif character.shape == "triangle":
        draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=character.rgb)
    elif character.shape == "diamond":
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=character.rgb)
    else:
        raise ValueError(f"no way to draw shape {character.shape!r}")


def render_frame(state: FrameState, image_size: int) -> Image.Image:
    image = Image.new("RGB", (image_size, image_size), SCENE_BY_NAME[state.scene].rgb)
    draw = ImageDraw.Draw(image)
    for name, placement in state.cast.items():
        draw_character(draw, name, placement.position, placement.size, image_size)
    return image
