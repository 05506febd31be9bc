"""The one exception type a user can cause. Its message is a single sentence meant for a person."""


class CircuitDeskError(Exception):
    """A problem with the user's input (file, model, prompt, option), stated in one clear sentence.

    Front ends show ``str(err)`` as is (CLI: stderr + exit 1, GUI: a dialog). Anything else that
    escapes is a bug: it is logged with its traceback and reported as an internal error.
    """
