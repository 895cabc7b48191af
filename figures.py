"""
The project's pictures, drawn with pillow from a few shared primitives, so that every chart has the same axes,
fonts and colours and no script carries its own axis code:

    colors(names)       one colour per name: the three fusions always the same, any other name the next free one
    nice_ticks(lo, hi)  round tick values (1, 2 or 5 times a power of ten apart) covering lo..hi
    Axes(image, box)    a plot area: frame, grid, ticks with labels, title, axis labels; then lines, bars,
                        a shaded stage and a legend, all in data coordinates
    line_panels(...)    panels of line charts in a grid (the benchmarks' and the experiments' curves)
    legend(...)         coloured swatches with their names
    wrap(s, width)      a line of text broken at spaces into lines no wider than width px
    sheet(images)       a grid of images with text above and under each (data sheets, heat maps)

Imports nothing of the project's: any script may draw with it.
"""
import math
from functools import lru_cache

from PIL import Image, ImageDraw, ImageFont

INK, MUTED, GRID, SHADE = (0, 0, 0), (90, 90, 90), (225, 225, 225), (238, 238, 238)
# distinct on white and for the common colour blindnesses in the first three (the fusions)
PALETTE = [(214, 39, 40), (31, 119, 180), (44, 160, 44), (255, 127, 14), (148, 103, 189), (23, 190, 207),
           (140, 86, 75), (227, 119, 194), (120, 170, 220), (152, 223, 138), (188, 189, 34), (127, 127, 127)]
FUSION_COLORS = {"insertion": PALETTE[0], "cross": PALETTE[1], "casa": PALETTE[2]}


@lru_cache(maxsize=None)
def font(size=14):
    return ImageFont.load_default(size=size)


def line_height(size):
    return size + 6


def text(draw, xy, s, size=14, fill=INK, anchor="la"):
    draw.text(xy, s, fill=fill, font=font(size), anchor=anchor)


def text_width(s, size=14):
    return font(size).getlength(s)


def wrap(s, width, size=14):
    """s broken at spaces into lines at most `width` px wide at font `size` (a word wider than that gets a line of
    its own); at least one line, so an empty caption still takes its row."""
    lines = []
    for word in s.split():
        if lines and text_width(f"{lines[-1]} {word}", size) <= width:
            lines[-1] += f" {word}"
        else:
            lines.append(word)
    return lines or [""]


def colors(names):
    """{name: colour}: a fusion always gets its own colour (every chart agrees on it), the other
    names the next palette colours no fusion holds, in order."""
    free = iter([c for c in PALETTE if c not in FUSION_COLORS.values()] * len(names))  # never runs out
    return {name: FUSION_COLORS.get(name) or next(free) for name in names}


def nice_ticks(lo, hi, n=5):
    """About n + 1 round values from lo to hi, evenly spaced by 1, 2 or 5 times a power of ten: the
    first within a step of lo, the last within a step of hi."""
    if hi <= lo:
        lo, hi = (lo - 1, hi + 1) if lo else (0, 1)
    raw = (hi - lo) / n
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw * (1 - 1e-9))
    first, last = math.ceil(lo / step - 1e-9), math.floor(hi / step + 1e-9)
    digits = max(0, -math.floor(math.log10(step)))  # round away float noise (0.30000000000000004)
    return [round(k * step, digits) for k in range(first, last + 1)]


def legend(draw, xy, entries, size=14, columns=1, box=False):
    """Swatches with names, `columns` to a row, from the top-left corner xy; `box`: on a white,
    framed box (inside a plot). Returns (width, height); with draw=None it only measures."""
    swatch, h, pad, apart = size, line_height(size), 6 if box else 0, 18  # apart: between columns
    col = swatch + 6 + max(text_width(name, size) for name, _ in entries) + apart
    rows = math.ceil(len(entries) / columns)
    w = col * min(columns, len(entries)) - apart + 2 * pad
    height = rows * h - (h - swatch) + 2 * pad
    x0, y0 = xy
    if draw is None:
        return w, height
    if box:
        draw.rectangle([x0, y0, x0 + w, y0 + height], fill="white", outline=GRID)
    for i, (name, color) in enumerate(entries):
        x, y = x0 + pad + (i % columns) * col, y0 + pad + (i // columns) * h
        draw.rectangle([x, y, x + swatch, y + swatch], fill=color, outline=(200, 200, 200))
        text(draw, (x + swatch + 6, y), name, size)
    return w, height


def percent(value):
    return f"{value:.0%}"


class Axes:
    """A plot area inside box = (left, top, right, bottom) of `image`, its labels included: a title
    above, y tick labels and ylabel to the left, x tick labels and xlabel below, a light grid at round
    ticks. x and y: the (lo, hi) the axes span; xticks: [(value, label), ...] instead of numbers (e.g.
    bar groups)."""

    def __init__(self, image, box, x, y, title="", xlabel="", ylabel="", xticks=None,
                 yfmt="{:g}".format, xfmt="{:g}".format, size=14):
        self.image, self.draw, self.size = image, ImageDraw.Draw(image), size
        left, top, right, bottom = box
        h = line_height(size)
        # a y tick every 45 to 110 px, an x tick every 120 to 300 px
        yt = [(v, yfmt(v)) for v in nice_ticks(*y, n=max(2, (bottom - top) // 45))]
        xt = xticks or [(v, xfmt(v)) for v in nice_ticks(*x, n=max(2, (right - left) // 120))]
        self.xlim, self.ylim = x, y
        label_w = max(text_width(s, size) for _, s in yt) + 8
        self.left, self.right = left + label_w + (h + 4 if ylabel else 4), right - 12
        self.top, self.bottom = top + (h + 6 if title else 8), bottom - h - (h + 4 if xlabel else 4)
        self.ticks = [v for v, _ in xt], [v for v, _ in yt]
        self.grid()
        d = self.draw
        for v, s in yt:
            text(d, (self.left - 6, self.py(v)), s, size, anchor="rm")
        for v, s in xt:
            text(d, (self.px(v), self.bottom + 4), s, size, anchor="ma")
        if title:
            text(d, (self.left, top + 2), title, size + 1)
        if xlabel:
            text(d, ((self.left + self.right) / 2, bottom - 2), xlabel, size, MUTED, anchor="md")
        if ylabel:  # turned a quarter, along the axis
            label = Image.new("RGB", (int(text_width(ylabel, size)) + 2, h), "white")
            text(ImageDraw.Draw(label), (1, 1), ylabel, size, MUTED)
            label = label.rotate(90, expand=True)
            image.paste(label, (left, int((self.top + self.bottom - label.height) / 2)))
        self.entries = {}

    def px(self, x):
        (a, b) = self.xlim
        return self.left + (self.right - self.left) * (x - a) / (b - a)

    def py(self, y):
        (a, b) = self.ylim
        return self.bottom - (self.bottom - self.top) * (y - a) / (b - a)

    def grid(self):
        """Light lines at the ticks, and the frame."""
        xs, ys = self.ticks
        for x in xs:
            self.draw.line([self.px(x), self.top, self.px(x), self.bottom], fill=GRID)
        for y in ys:
            self.draw.line([self.left, self.py(y), self.right, self.py(y)], fill=GRID)
        self.draw.rectangle([self.left, self.top, self.right, self.bottom], outline=INK)

    def stage(self, x0, x1, label):
        """A stage of the run the curves do not show (e.g. pretraining before them): shaded, named."""
        self.draw.rectangle([self.px(x0), self.top + 1, self.px(x1), self.bottom - 1], fill=SHADE)
        self.grid()
        self.draw.line([self.px(x1), self.top, self.px(x1), self.bottom], fill=MUTED, width=1)
        lines = label.split("\n")
        for i, s in enumerate(lines):
            y = (self.top + self.bottom) / 2 + (i - (len(lines) - 1) / 2) * line_height(self.size)
            text(self.draw, ((self.px(x0) + self.px(x1)) / 2, y), s, self.size, MUTED, anchor="mm")

    def line(self, points, color, label=None, width=2):
        if label:
            self.entries[label] = color
        pts = [(self.px(x), self.py(y)) for x, y in points]
        if len(pts) > 1:
            self.draw.line(pts, fill=color, width=width, joint="curve")
        for x, y in pts if len(pts) <= 60 else ():  # each measured point, where they are few enough to see
            self.draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=color)

    def bar(self, x0, x1, y, color, label=None):
        if label:
            self.entries[label] = color
        self.draw.rectangle([self.px(x0), self.py(y), self.px(x1), self.py(self.ylim[0])], fill=color)

    def hline(self, x0, x1, y, color=INK, width=3):
        self.draw.line([self.px(x0), self.py(y), self.px(x1), self.py(y)], fill=color, width=width)

    def legend(self, entries=None, where="best"):
        """The labelled lines and bars (or entries, {name: colour}) in a framed box at a corner of
        the plot: where = "best" (the corner over the fewest drawn pixels), "upper left", "upper
        right", "lower left" or "lower right"."""
        entries = list((entries or self.entries).items())
        w, h = legend(None, (0, 0), entries, self.size, box=True)
        corners = {f"{v} {u}": (self.left + 6 if u == "left" else self.right - 6 - w,
                                self.top + 6 if v == "upper" else self.bottom - 6 - h)
                   for v in ("upper", "lower") for u in ("left", "right")}
        if where == "best":
            def busy(corner):  # pixels not white under the box
                x, y = map(int, corners[corner])
                return w * h - self.image.crop((x, y, x + w, y + h)).convert("L").histogram()[255]
            where = min(corners, key=busy)
        legend(self.draw, corners[where], entries, self.size, box=True)


def line_panels(panels, cols=1, panel=(900, 300), y=None, yfmt="{:g}".format, stage=None):
    """Panels of line charts, left to right in rows of `cols`, panel=(w, h) pixels each: each panel
    (title, xlabel, ylabel, {name: [(x, y), ...]}), one colour per name (colors()), a legend, x from
    0; y: one range for every panel (default: 0 to the panel's largest y); stage=(x0, x1, label): a
    shaded span in each panel. Returns the image."""
    rows = math.ceil(len(panels) / cols)
    image = Image.new("RGB", (panel[0] * cols, panel[1] * rows), "white")
    for i, (title, xlabel, ylabel, lines) in enumerate(panels):
        points = [p for line in lines.values() for p in line]
        top_x = max([x for x, _ in points] + [stage[1] if stage else 0]) or 1
        left, top = (i % cols) * panel[0], (i // cols) * panel[1]
        top_y = 1.04 * max((v for _, v in points), default=0) or 1  # the highest point clear of the frame
        ax = Axes(image, (left + 8, top + 8, left + panel[0] - 8, top + panel[1] - 8), (0, top_x),
                  y or (0, top_y), title, xlabel, ylabel, yfmt=yfmt)
        if stage:
            ax.stage(*stage)
        for (name, line), color in zip(lines.items(), colors(lines).values()):
            ax.line(line, color, name)
        ax.legend()
    return image


def sheet(images, cols=None, gap=2, margin=(0, 0), title=(), above=None, below=None, legend_entries=None,
          size=14):
    """Images left to right in rows of `cols` (default: one row), `gap` px apart, margin=(x, y) px
    around: the `title` lines on top, above[i] / below[i] (lists of lines) over and under image i, the
    legend entries at the bottom. In each block of text the first line is in ink, the others smaller
    and muted. Returns the image."""
    cols = cols or len(images)
    grid = [images[r:r + cols] for r in range(0, len(images), cols)]
    line_size = lambda i: size if i == 0 else size - 3
    block = lambda lines: sum(line_height(line_size(i)) for i in range(len(lines)))
    n_above = max((block(a) for a in above or [()]), default=0)
    n_below = max((block(b) for b in below or [()]), default=0)
    width = max(sum(im.width for im in row) + gap * (len(row) - 1) for row in grid) + 2 * margin[0]
    heights = [n_above + max(im.height for im in row) + n_below for row in grid]
    height = 2 * margin[1] + block(title) + sum(heights) + gap * (len(grid) - 1) + (
        line_height(size) + 4 if legend_entries else 0)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)

    def write(x, y, lines):
        for i, s in enumerate(lines):
            text(draw, (x, y), s, line_size(i), INK if i == 0 else MUTED)
            y += line_height(line_size(i))

    write(margin[0], margin[1], title)
    y, k = margin[1] + block(title), 0
    for row, row_h in zip(grid, heights):
        x = margin[0]
        for im in row:
            write(x, y, above[k] if above else ())
            canvas.paste(im, (x, y + n_above))
            write(x, y + n_above + im.height, below[k] if below else ())
            x, k = x + im.width + gap, k + 1
        y += row_h + gap
    if legend_entries:
        legend(draw, (margin[0], y - gap + 4), legend_entries, size, columns=len(legend_entries))
    return canvas
