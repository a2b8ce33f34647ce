"""The error hierarchy. The CLI turns each into one red line and an exit code.

Every message should say what is wrong and what to do next.
"""

from __future__ import annotations


class CascadiaError(Exception):
    """Base of every error the CLI reports as one line (never a traceback)."""

    exit_code: int = 1


class UserInputError(CascadiaError):
    """Bad input from the user (a file, a flag, a field). Exit code 2."""

    exit_code = 2


class SpecError(UserInputError):
    """A bad `cascade.yaml` (or other input file): names the file, the field path and the fix."""

    def __init__(self, file: str, field: str, message: str) -> None:
        self.file = file
        self.field = field
        self.message = message
        where = f"{file}: {field}: " if field else f"{file}: "
        super().__init__(where + message)


class SpecProblems(SpecError):
    """Several problems in one input file, reported together (one line each, in a stable order), so one run of
    `cascadia validate` shows everything to fix. `file`, `field` and `message` are those of the first problem."""

    def __init__(self, problems: list[SpecError]) -> None:
        self.problems = list(problems)
        first = self.problems[0]
        self.file, self.field, self.message = first.file, first.field, first.message
        UserInputError.__init__(self, "\n".join(str(p) for p in self.problems))


def raise_problems(problems: list[SpecError]) -> None:
    """Raise nothing, the one problem, or all of them together."""
    if len(problems) == 1:
        raise problems[0]
    if problems:
        raise SpecProblems(problems)


class ProfileError(SpecError):
    """A bad quality profile CSV: names the file, the line and column, and the fix."""


class CatalogError(UserInputError):
    """A catalog lookup failed (unknown GPU or cloud, malformed catalog file). Exit code 2."""


class ModelError(UserInputError):
    """An unknown model or an unreadable model config. Exit code 2."""


class PerfError(CascadiaError):
    """The performance model cannot evaluate a configuration."""


class PlanError(CascadiaError):
    """Planning failed (no feasible plan, solver failure)."""


class InfeasibleError(PlanError):
    """No plan satisfies the constraints; the message says which constraint to relax."""


class LaunchError(CascadiaError):
    """Launching, observing or stopping a deployment failed; the message says what was cleaned up and what next."""


class CapacityError(LaunchError):
    """SkyPilot found no capacity on any offer of a stage's failover list (its ResourcesUnavailableError after
    trying them all, or a SkyServe replica that failed to provision). `stages` names the stages; `up` re-plans
    without their offers."""

    def __init__(self, message: str, stages: tuple[str, ...] = ()) -> None:
        self.stages = tuple(stages)
        super().__init__(message)


class CloudAccessError(CascadiaError):
    """A cloud API cannot be used at all (no credentials, SDK missing); the message says what to run."""
