"""The reviewer's keyboard: every shortcut in one table, and the script (``keys.js``) that
the page runs. Keys never fire while the reviewer types in a text field."""
from __future__ import annotations

import json
from pathlib import Path

from ..corrections import NO_CHANGE, fine_choices
from ..labels import TASKS


def form_choices(task) -> list[tuple[str, str]]:
    """(label, value) of a task's choices in the review form, in the order the digit keys pick
    them: no change, its classes, then the fine Derm7pt values of classes that group several."""
    return [(NO_CHANGE, NO_CHANGE), *((c, c) for c in task.classes), *fine_choices(task)]

SHORTCUTS = (("a / c / u / s", "verdict: agree, correct, unsure, skip"),
             ("t / Shift+t", "next / previous task of the form (outlined; each case starts on DIAG)"),
             ("0-9", "the outlined task's value: 0 no change, 1 its first class ... (the key shows beside each "
                     "choice)"),
             ("f", "type to filter the outlined task's values (all 24 of DIAG), ↓ ↑ and Enter to pick, Esc to leave"),
             ("Enter, Ctrl+Enter", "save the review (Ctrl+Enter also from the note, and the keys work again after)"),
             ("n", "next case you have not reviewed"), ("← →", "previous / next case of the queue"),
             ("Ctrl + wheel (pinch), drag, double-click", "zoom, pan, reset an image"),
             ("?", "show or hide this list"))
"""Every keyboard shortcut, for the help the ``?`` key opens."""
SHORTCUTS_HELP = ("Keys: **a** agree · **c** correct · **u** unsure · **s** skip · **t** next task, **0-9** its "
                  "value, **f** filter its values · **Enter** save · **n** next unreviewed · **← →** cases · "
                  "**?** all keys")
"""The line under the review form."""


def page_script() -> str:
    """The ``<script>`` for the page's head, with the task names and the shortcut table filled in."""
    js = (Path(__file__).with_name("keys.js").read_text()
          .replace("__TASKS__", json.dumps([t.name for t in TASKS]))
          .replace("__CHOICES__", json.dumps([[label for label, _ in form_choices(t)] for t in TASKS]))
          .replace("__SHORTCUTS__", json.dumps(SHORTCUTS)))
    return f"<script>\n{js}</script>\n"
