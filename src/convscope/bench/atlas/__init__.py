"""`convscope atlas`: the zoo measured on this machine, into one SQLite file (db.py), measured by measure.py,
drawn by report.py. See docs/atlas.md."""
from .db import default_path, merge, open_db, read_machines, read_rows, this_machine
from .measure import FORMS, Settings, measure_model, query, resolve_models, run_atlas
from .report import atlas_report, write_atlas_report

__all__ = ["FORMS", "Settings", "atlas_report", "default_path", "measure_model", "merge", "open_db", "query",
           "read_machines", "read_rows", "resolve_models", "run_atlas", "this_machine", "write_atlas_report"]
