"""
show_data.py: write sample conversations to look at, as the model will see them: OUT_DIR/NNN_task.png (all
images of a conversation, left to right in rows of 8) and OUT_DIR/conversations.txt (the text).

    python show_data.py --out_dir=out-data --n=16 --tasks=reading,video
    python show_data.py --out_dir=out-data --style=varied      # a camera per scene (train.py --style=varied)
"""
import random
from dataclasses import dataclass
from pathlib import Path

import figures
from common import UsageError, build, parse_options, run_script
from scenes import MIN_SIZE, TASKS, VIDEO_TASK, check_style, make_conversation, parse_tasks, train_seed


@dataclass
class SampleOptions:
    """python show_data.py: write sample conversations to look at (see the top of show_data.py)."""
    out_dir: str = "out-data"   # created if needed
    n: int = 16                 # conversations
    image_size: int = 64
    seed: int = 0
    questions: int = 1          # up to this many questions about each single-scene image, as train.py asks
    tasks: str = "all"          # comma-separated, or all to cycle through every task (and video)
    style: str = "default"      # how the scenes look: default, shifted or varied (scenes.STYLES)

    def __post_init__(self):
        for name, low in (("n", 1), ("image_size", MIN_SIZE), ("questions", 1)):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < low:
                raise ValueError(f"--{name} must be an integer >= {low}, got {getattr(self, name)!r}")
        check_style(self.style)
        self.task_list = TASKS + (VIDEO_TASK,) if self.tasks == "all" else parse_tasks(self.tasks)


def main(argv):
    _, (options,) = parse_options(argv, [("options", SampleOptions)], SampleOptions.__doc__)
    args = build(SampleOptions, options)
    rng = random.Random(args.seed)
    out = Path(args.out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot use --out_dir={args.out_dir!r}: {e.strerror}") from None
    listing = []
    for i in range(args.n):
        task = args.task_list[i % len(args.task_list)]
        conv = make_conversation(task, train_seed(rng), args.image_size, args.questions, args.style)
        images = [img for turn in conv.turns for img in turn.images]
        name = f"{i:03d}_{task}.png"
        figures.sheet(images, cols=8).save(out / name)  # left to right, in rows of 8, 2 px apart
        listing.append(f"{i:03d} {task}: {name} ({len(images)} image{'s' * (len(images) > 1)})")
        for k, turn in enumerate(conv.turns):
            if turn.question is None:
                listing.append(f"  frame {k}: {turn.answer}")
            else:
                listing.append(f"  Q: {turn.question}  A: {turn.answer}")
    (out / "conversations.txt").write_text("\n".join(listing) + "\n")
    print(f"wrote {args.n} conversations to {out} (see {out / 'conversations.txt'})")


if __name__ == "__main__":
    run_script(main, "show_data.py")