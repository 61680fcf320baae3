"""py-echo: the Python twin of the `echo` handler, built with componentize-py.

It returns its payload, byte for byte, as its output, and logs one debug line through the
host's `log` import, which shows that a Python guest reaches the same imports as a Rust one.
Its cleanup has nothing to free.
"""

import wit_world
from wit_world.imports import log, types


class WitWorld(wit_world.WitWorld):
    def run(self, task: types.Task) -> types.Outcome:
        log.write(
            types.Level.DEBUG,
            f"py-echo: task {task.id} attempt {task.attempt} echoes {len(task.payload)} bytes",
        )
        return types.Outcome_Done(task.payload)

    def cleanup(self, context: list[types.ContextEntry], reason: types.CleanupReason) -> None:
        return None
