"""The planner: deployment MILP (`deploy`), its independent check (`verify`), threshold search, plan.json.

Import-light on purpose: nothing here imports PuLP or the performance model; import the submodules you need
(`from cascadia_sky.planner.deploy import solve`). PuLP is imported only inside `deploy`'s solve functions.
"""
