"""Exercise 7 (answers): wrong answers about ex7_eval.json (a run's eval.json, where count and shape tie for the
highest blind accuracy), and right ones."""
import os

EVAL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ex7_eval.json")
WHY = "count has only four possible answers and 2 is far more common, so a blind model guesses it and scores"


def answers(**changes):
    """The right answers, with some changed."""
    right = {"eval_json": EVAL, "count_accuracy": 0.8125, "count_blind": 0.3125, "best_blind_task": "count",
             "why": WHY}
    return lambda: {**right, **changes}


WRONG = {  # name: (a wrong answer, a fragment of the one line its grader must say)
    "blind_number_wrong": (answers(count_blind=0.0625), "count_blind is 0.0625"),
    "percent_not_fraction": (answers(count_accuracy=81.25), "count_accuracy is 81.25"),
    "accuracy_and_blind_swapped": (answers(count_accuracy=0.3125, count_blind=0.8125), "count_accuracy is 0.3125"),
    "not_the_highest": (answers(best_blind_task="color"), "is count and shape's (31.2%)"),
    "nonsense_words": (answers(why="blorp zingle quaffet morvane tesk plumbo grisk vandle"), "for the teacher"),
    "no_task_named": (answers(why="the model just learns the priors of the questions from the text alone"),
                      "does not name count"),
    "too_short": (answers(why="priors"), "a sentence or two"),
    "still_none": (answers(why=None), "answers()['why'] is still None"),
    "no_file": (answers(eval_json="out-nowhere/eval.json"), "no file out-nowhere/eval.json"),
    "missing_key": (lambda: {"count_accuracy": 0.8125}, "must return a dict with the keys"),
}
RIGHT = {"count": answers(),
         "shape_ties": answers(best_blind_task="shape", why="Shape questions have only a few possible answers, "
                               "so guessing the most frequent shape gets a third right without looking.")}
