"""The launcher: `cascadia up` / `status` / `down`.

`launcher.py` decides (a pure function from the recorded deployment and a plan to actions) and wires commands to a
backend; `backends/` act (`local` processes, SkyServe services, SkyPilot clusters); `state.py` records what was
done (SQLite under $CASCADIA_HOME); `status.py` derives states from observations; `tasks.py` renders the SkyPilot
task templates in tasks/. Only `backends/sky.py` and `skypilot.py` import SkyPilot, and only when used.
"""
