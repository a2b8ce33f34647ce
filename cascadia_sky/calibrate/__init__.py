"""`cascadia calibrate`: measure a cascade's quality profile on a prompt set, and report how good its scores are.

- `prompts`: the prompt file formats (JSONL, CSV) and the sampling parameters.
- `stages`: where the stage endpoints come from (--endpoint, registered sources, local engines).
- `client`: the OpenAI-compatible chat call (stdlib); `cache`: finished answers, for resuming.
- `graders`: exact, contains, numeric, choice, judge, auto, module:function.
- `runner`: the run (concurrency, progress, Ctrl-C, errors) and the profile it writes.
- `report`: quality intervals, AUROC per scorer, reliability, the recommended scorer, warnings, PNG.
"""

from cascadia_sky.calibrate.prompts import Prompt, Sampling, load_prompts
from cascadia_sky.calibrate.runner import (CalibrationError, CalibrationInterrupted, CalibrationRun, calibrate,
                                           profile_rows, scorer_values)
from cascadia_sky.calibrate.stages import StageTarget, parse_endpoint_args, register_endpoint_source

__all__ = ["CalibrationError", "CalibrationInterrupted", "CalibrationRun", "Prompt", "Sampling", "StageTarget",
           "calibrate", "load_prompts", "parse_endpoint_args", "profile_rows", "register_endpoint_source",
           "scorer_values"]
