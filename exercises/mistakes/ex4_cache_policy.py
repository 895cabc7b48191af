"""Exercise 4 (extend_window): wrong cache policies, and right ones written differently from casa.py's."""


def keep_everything(self, kv, latest_window):
    return self.window.append(kv)


def reset_first(self, kv, latest_window):  # a new window empties the buffer before this call's keys go in
    if latest_window != self.window_number:
        self.window.replace(kv)
        self.window_number = latest_window
        return kv
    return self.window.append(kv)


def stub_wording(self, kv, latest_window):  # "earlier keys of the current window, then kv"
    earlier = self.window.view() if len(self.window) else None
    if earlier is not None:
        earlier = earlier.keep(earlier.win[0] == latest_window)
    seen = kv if earlier is None else earlier.then(kv)
    self.window.replace(seen.keep(seen.win[0] == latest_window))
    return seen


def latest_only(self, kv, latest_window):  # returns what it keeps: the latest window's keys only
    seen = self.window.append(kv)
    self.window.replace(seen.keep(seen.win[0] == latest_window))
    return self.window.view()


shared = {"window": None}


def shared_window_number(self, kv, latest_window):  # stale state: one window number for every layer
    seen = self.window.append(kv)
    if latest_window != shared["window"]:
        self.window.replace(seen.keep(seen.win[0] == latest_window))
        shared["window"] = latest_window
    return seen


def two_windows(self, kv, latest_window):  # off by one: keeps the previous window too
    seen = self.window.append(kv)
    self.window.replace(seen.keep(seen.win[0] >= latest_window - 1))
    return seen


def this_call_only(self, kv, latest_window):  # keeps only this call's keys of the latest window
    seen = self.window.append(kv)
    self.window.replace(kv.keep(kv.win[0] == latest_window))
    return seen


def new_keys_only(self, kv, latest_window):  # keeps kv's latest keys when a window opens, else adds kv
    seen = self.window.append(kv)
    if latest_window != self.window_number:
        self.window.replace(kv.keep(kv.win[0] == latest_window))
        self.window_number = latest_window
    return seen


def rebuilt(self, kv, latest_window):  # no append: builds the list of keys with KV.then every call
    seen = self.window.view().then(kv) if len(self.window) else kv
    self.window.replace(seen.keep(seen.win[0] == latest_window))
    return seen


def trimmed_first(self, kv, latest_window):  # drops the earlier windows before this call's first queries see them
    if len(self.window):
        held = self.window.view()
        self.window.replace(held.keep(held.win[0] == latest_window))
    return self.window.append(kv)


def trimmed_late(self, kv, latest_window):  # trims the last call's earlier windows only when the next call comes
    if len(self.window):
        held = self.window.view()
        self.window.replace(held.keep(held.win[0] == self.window_number))
    self.window_number = latest_window
    return self.window.append(kv)


def from_first_window_of_call(self, kv, latest_window):  # keeps from the window the call starts in
    seen = self.window.append(kv)
    if latest_window != self.window_number and len(kv):
        self.window.replace(seen.keep(seen.win[0] >= int(kv.win[0, 0])))
        self.window_number = latest_window
    return seen


def on_the_class(self, kv, latest_window):  # stale state: the window number a class attribute, shared by all
    seen = self.window.append(kv)
    if latest_window != type(self).__dict__.get("number"):
        self.window.replace(seen.keep(seen.win[0] == latest_window))
        type(self).number = latest_window
    return seen


def filtered_every_call(self, kv, latest_window):  # no window number: drops whatever is not the latest window
    seen = self.window.append(kv)
    stale = seen.win[0] != latest_window
    if bool(stale.any()):
        self.window.replace(seen.keep(~stale))
    return seen


WRONG = {  # name: (a wrong answer, a fragment of the one line its grader must say)
    "keep_everything": (keep_everything, "still holds keys of an earlier window"),
    "returns_nothing": (lambda self, kv, latest_window: None, "must return a casa.KV"),
    "reset_first": (reset_first, "cached call 5 [5, 4, <image>]"),
    "stub_wording": (stub_wording, "cached call 5 [5, 4, <image>]"),
    "latest_only": (latest_only, "cached call 5 [5, 4, <image>]"),
    "shared_window_number": (shared_window_number, "still holds keys of an earlier window"),
    "two_windows": (two_windows, "still holds keys of an earlier window"),
    "this_call_only": (this_call_only, "it must keep 4: the latest image"),
    "trimmed_first": (trimmed_first, "cached call 5 [5, 4, <image>] (N=4, 2 layer(s), 2 head(s), base 10000): the "
                                     "logits differ"),
    "trimmed_late": (trimmed_late, "after it layer 0's cache still holds keys of an earlier window"),
    "from_first_window_of_call": (from_first_window_of_call, "cached call 7 [<image>, <image>, 7, 6, 5]"),
    "on_the_class": (on_the_class, "after it layer 1's cache still holds keys of an earlier window"),
}
RIGHT = {"new_keys_only": new_keys_only, "rebuilt": rebuilt, "filtered_every_call": filtered_every_call}
