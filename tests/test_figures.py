"""Tests for figures.py: round ticks that cover the range, an axes drawn to the size asked with its stage and
legend (found by their colours), one colour per fusion everywhere, and a sheet of images laid out as asked."""
import pytest
from PIL import Image

import figures


def colors_in(image):
    return {c for _, c in image.getcolors(maxcolors=1 << 24)}


@pytest.mark.parametrize("lo, hi, step", [(0, 1, 0.2), (0, 353, 100), (0, 41500, 10000), (0, 210, 50),
                                          (-3, 7, 2), (0.001, 0.0042, 0.001), (5, 5, 0.5)])
def test_ticks_are_round_and_cover_the_range(lo, hi, step):
    ticks = figures.nice_ticks(lo, hi)
    gaps = {round(b - a, 12) for a, b in zip(ticks, ticks[1:])}
    assert gaps == {step} and 4 <= len(ticks) <= 8
    assert all(abs(t / step - round(t / step)) < 1e-9 for t in ticks)  # multiples of the step: 0.2, never 0.19999
    assert all(len(repr(t)) <= 6 for t in ticks)
    if hi > lo:  # from within a step of each end, never beyond it
        assert lo <= ticks[0] < lo + step and hi - step < ticks[-1] <= hi


def test_an_axes_draws_its_lines_stage_and_legend():
    image = Image.new("RGB", (640, 400), "white")
    ax = figures.Axes(image, (0, 0, 640, 400), (0, 300), (0, 1), "title", "seconds", "accuracy",
                      yfmt=figures.percent)
    ax.stage(0, 100, "encoder pretraining")
    colors = figures.colors(["insertion", "cross", "casa"])
    for i, (name, color) in enumerate(colors.items()):
        ax.line([(120, 0.1 * i), (290, 0.5 + 0.1 * i)], color, name)
    ax.legend(where="upper left")
    pixels = colors_in(image)
    assert image.size == (640, 400)
    assert set(colors.values()) <= pixels and figures.SHADE in pixels
    # the legend's swatches: a square of each colour, stacked at the upper left of the plot, inside the stage
    swatches = [image.getpixel((ax.left + 19, ax.top + 19 + k * figures.line_height(14))) for k in range(3)]
    assert swatches == list(colors.values())
    # the data lands where the axes say: the stage ends at x = 100, a point at (290, 0.7) is the casa colour
    assert image.getpixel((round(ax.px(50)), round(ax.py(0.5)))) == figures.SHADE
    assert image.getpixel((round(ax.px(290)), round(ax.py(0.7)))) == colors["casa"]


def test_every_chart_gives_a_fusion_the_same_colour():
    assert figures.colors(["casa", "cross"]) == {"casa": figures.FUSION_COLORS["casa"],
                                                 "cross": figures.FUSION_COLORS["cross"]}
    many = figures.colors(["a", "insertion", "b", "c"])
    assert many["insertion"] == figures.FUSION_COLORS["insertion"]
    assert len(set(many.values())) == 4 and not {many["a"], many["b"]} & set(figures.FUSION_COLORS.values())


def test_line_panels_size_and_a_legend_per_panel():
    lines = {"insertion": [(0, 0), (10, 5)], "casa": [(0, 0), (10, 2)]}
    image = figures.line_panels([("a", "x", "y", lines)] * 3, cols=2, panel=(300, 200))
    assert image.size == (600, 400)
    assert figures.FUSION_COLORS["casa"] in colors_in(image.crop((300, 0, 600, 200)))


def test_sheet_lays_images_out_in_rows_with_text():
    red, blue = Image.new("RGB", (20, 10), (255, 0, 0)), Image.new("RGB", (20, 10), (0, 0, 255))
    plain = figures.sheet([red, blue, red], cols=2, gap=2)
    assert plain.size == (42, 22)
    assert plain.getpixel((0, 0)) == (255, 0, 0) and plain.getpixel((22, 0)) == (0, 0, 255)
    assert plain.getpixel((21, 5)) == (255, 255, 255) and plain.getpixel((0, 12)) == (255, 0, 0)
    assert figures.sheet([red]).size == (20, 10)
    titled = figures.sheet([red, blue], gap=4, margin=(5, 3), title=["t", "subtitle"], below=[["x"], ["y", "z"]],
                           legend_entries=[("red", (255, 0, 0))])
    text_h = figures.line_height(14) + figures.line_height(11)
    assert titled.size[0] == 5 + 20 + 4 + 20 + 5
    assert titled.getpixel((5, 3 + text_h)) == (255, 0, 0)  # under the title
    assert titled.size[1] == 3 + text_h + 10 + text_h + figures.line_height(14) + 4 + 3


@pytest.mark.parametrize("s", ["a red circle at the top left and a blue star at the center", "one", "",
                               "extraordinarilylongwordthatcannotfit and more"])
def test_wrap_keeps_every_word_and_each_line_fits(s):
    lines = figures.wrap(s, 120)
    assert " ".join(lines).split() == s.split() and len(lines) >= 1
    for line in lines:
        assert figures.text_width(line) <= 120 or " " not in line  # only a lone word may be wider
    if len(lines) > 1:  # greedy: no line could have taken the next line's first word
        assert all(figures.text_width(f"{a} {b.split()[0]}") > 120 for a, b in zip(lines, lines[1:]))
