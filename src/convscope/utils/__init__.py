"""Small helpers with no knowledge of models: devices, threads and text tables. Everything else may import
them; they import nothing from convscope."""
from .device import resolve_device
from .tables import markdown_table, text_table
from .threads import set_threads, threads_set

__all__ = ["markdown_table", "resolve_device", "set_threads", "text_table", "threads_set"]
