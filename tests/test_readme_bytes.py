"""Does the README's table of bytes per parameter ("Fewer bytes per parameter") say what the
floors and the state dtypes say?

Every row lists the state dtypes (param / master / moments) and the bytes kept and moved per
parameter. Kept is the parameter, the master and the two moments; moved is what one fused
pass reads and writes with a gradient of the parameter's dtype: the gradient, the parameter
(read too unless an fp32 master is the source of the update), the master and both moments
read and written. The triton_adam rows must also be the floors of ``perf/floors.py``, the
numbers the SASS audit checks the compiled kernels against.
"""

from __future__ import annotations

import pathlib
import re

from floors import FLOORS

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
SIZE = {"fp32": 4, "bf16": 2, "fp16": 2, "int16": 2, "-": 0}
# The triton_adam rows, by the start of their first cell -> their FLOORS mode.
TRITON_ROWS = {
    "triton_adam, fp32 parameters": "fp32",
    "triton_adam `multi_precision=True` |": "half master",
    'triton_adam `master_weight_format="remainder"`': "half remainder",
    "triton_adam remainder + `moment_dtype=torch.bfloat16`": "half remainder bf16-moments",
    "triton_adam `multi_precision=True` + bf16 moments": "half master bf16-moments",
    "triton_adam no master": "half",
    "triton_adam `stochastic_rounding=True` |": "half stochastic",
    "triton_adam `stochastic_rounding=True` + bf16 moments": "half stochastic bf16-moments",
}


def _rows() -> list[tuple[str, list[str], int, int]]:
    """(the row's line, its dtypes, kept, moved) for every row of the table."""
    text = README.read_text()
    section = text[text.index("## Fewer bytes per parameter"):]
    section = section[:section.index("\n## ")]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or not re.fullmatch(r"[\w-]+( \w+)? / .+ / .+", cells[1]):
            continue
        dtypes = [c.split()[0] for c in cells[1].split(" / ")]
        kept, moved = (int(re.search(r"\d+", c).group()) for c in cells[2:])
        rows.append((line, dtypes, kept, moved))
    return rows


def test_the_table_has_every_mode_and_the_peers():
    lines = [line for line, *_ in _rows()]
    for start in TRITON_ROWS:
        assert sum(line.startswith(f"| {start}") for line in lines) == 1, start
    for peer in ("torch.optim.AdamW(fused=True)", "Apex `FusedAdam", "TransformerEngine"):
        assert any(peer in line for line in lines), peer


def test_kept_and_moved_bytes_follow_from_the_state_dtypes():
    for line, (param, master, moment), kept, moved in _rows():
        p, w, m = SIZE[param], SIZE[master], SIZE[moment]
        assert kept == p + w + 2 * m, line
        param_read = 0 if master == "fp32" else p  # an fp32 master is the update's source
        assert moved == p + param_read + p + 2 * w + 4 * m, line  # grad, param, state


def test_triton_adam_rows_are_the_audited_floors():
    for line, _, _, moved in _rows():
        modes = [mode for start, mode in TRITON_ROWS.items() if line.startswith(f"| {start}")]
        if modes:
            assert moved == FLOORS[modes[0]].total, line
