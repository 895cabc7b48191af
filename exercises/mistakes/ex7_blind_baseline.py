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
    "highest_accuracy_not_blind": (answers(best_blind_task="position", why="position has a few possible answers, so "
                                           "a guess is often right"), "best_blind_task is 'position'"),
    "blind_is_the_accuracy": (answers(count_blind=0.8125), "blind_accuracy['count']"),
    "why_of_another_task": (answers(why="color has only six possible answers, so chance alone gives one in six"),
                            "does not name count"),
    "why_says_it_sees": (answers(why="count is easy because the model can always still see the shapes in the gray "
                                     "images"), "does not name count and what about its answers"),
    "why_restates_the_number": (answers(why="count has the highest blind accuracy of all the tasks in my run, 0.31"),
                                "does not name count"),
    "why_keywords_only": (answers(why="count: prior prior prior, blah blah foo bar baz"),
                          "'why' does not read as a sentence"),
}
RIGHT = {"count": answers(),
         "shape_ties": answers(best_blind_task="shape", why="Shape questions have only a few possible answers, "
                               "so guessing the most frequent shape gets a third right without looking.")}
