"""The web demo (`medsa-peft demo`): a page served by Python's standard library to upload a NIfTI, DICOM or
PNG / JPEG image, click on it, see the mask and download it. `app` holds the sessions and the model call, `server`
the HTTP side, `static/` the page."""

from ..lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(
    __name__,
    {
        ".app": ["DemoApp", "DemoError", "DemoSession", "SessionNotFoundError", "load_demo_predictor"],
        ".server": ["DemoServer"],
    },
)
