"""Pickle safety: list the globals a pickle-based file would import without running it, then load it.

`scan` walks the opcodes of plain and joblib pickle streams, compressed joblib files and
PyTorch zip archives; `load` unpickles only after a clean scan, through an allowlisting
unpickler.
"""
