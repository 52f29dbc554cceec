"""Reference training pipeline for sdmreid: data layer, model, engine and reporting.

This package lives under ``examples/`` and is not part of the installed ``sdmreid`` library; it
shows how the library's components are wired together in a complete cross-modal ReID trainer.
"""
