"""The one exception type a stage raises for a failure its user can act on.

The doit actions (tasks/graph.py) turn it into a failed task that shows just
its message; anything else is a bug and shows its traceback.
"""


class StageFailed(Exception):
    pass
