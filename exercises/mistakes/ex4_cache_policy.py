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


WRONG = {  # name: (a wrong answer, a fragment of the one line its grader must say)
    "keep_everything": (keep_everything, "still holds keys of an earlier window"),
    "returns_nothing": (lambda self, kv, latest_window: None, "must return a casa.KV"),
    "reset_first": (reset_first, "cached call 5 [5, 4, <image>]"),
    "stub_wording": (stub_wording, "cached call 5 [5, 4, <image>]"),
    "latest_only": (latest_only, "cached call 5 [5, 4, <image>]"),
    "shared_window_number": (shared_window_number, "still holds keys of an earlier window"),
    "two_windows": (two_windows, "still holds keys of an earlier window"),
    "this_call_only": (this_call_only, "it must keep 4: the latest image"),
}
RIGHT = {"new_keys_only": new_keys_only, "rebuilt": rebuilt}
