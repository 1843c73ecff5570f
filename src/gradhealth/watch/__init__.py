"""The watch pillar: a training monitor cheap enough to leave on.

:func:`watch` attaches to a model and its optimizer(s) and, while the model trains, measures
per-layer statistics on a schedule, runs the :mod:`gradhealth.detectors` over them, records
everything in a run store, guards the run against NaN/Inf (``on_nonfinite``) and, when a step
goes non-finite, replays it to name the first module where it happened.
"""

from .api import watch
from .replay import Capture, ReplayReport, replay_step
from .schedule import Schedule, every, log_spaced, never, steps
from .session import WatchSession
from .watcher import Watcher, WatchWarning, default_detail_schedule

__all__ = [
    "watch",
    "Watcher",
    "WatchSession",
    "WatchWarning",
    "ReplayReport",
    "replay_step",
    "Capture",
    "Schedule",
    "every",
    "log_spaced",
    "steps",
    "never",
    "default_detail_schedule",
]
