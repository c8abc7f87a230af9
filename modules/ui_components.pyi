"""A1111's `modules.ui_components`: thin Gradio wrappers with A1111's names and CSS classes."""
from __future__ import annotations

import itertools

import gradio as gr

__all__ = ["FormComponent", "FormRow", "FormColumn", "FormGroup", "FormHTML", "ToolButton", "ResizeHandleRow",
           "DropdownMulti", "DropdownEditable", "InputAccordion"]

_ids = itertools.count()


def _classes(kwargs: dict, *names: str) -> dict:
    extra = kwargs.pop("elem_classes", None) or []
    kwargs["elem_classes"] = [*names, *([extra] if isinstance(extra, str) else extra)]
    return kwargs


class FormComponent:
    """Marker base class (A1111 uses it to style form components)."""

from gradio.events import Dependency

class ToolButton(gr.Button):
    """A small icon button."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("size", "sm")
        super().__init__(*args, **_classes(kwargs, "tool"))
    from typing import Callable, Literal, Sequence, Any, TYPE_CHECKING
    from gradio.blocks import Block
    if TYPE_CHECKING:
        from gradio.components import Timer
        from gradio.components.base import Component


class FormRow(gr.Row, FormComponent):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **_classes(kwargs, "form"))
    from typing import Callable, Literal, Sequence, Any, TYPE_CHECKING
    from gradio.blocks import Block
    if TYPE_CHECKING:
        from gradio.components import Timer
        from gradio.components.base import Component


class ResizeHandleRow(gr.Row):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **_classes(kwargs, "resize-handle-row"))
    from typing import Callable, Literal, Sequence, Any, TYPE_CHECKING
    from gradio.blocks import Block
    if TYPE_CHECKING:
        from gradio.components import Timer
        from gradio.components.base import Component


class FormColumn(gr.Column, FormComponent):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **_classes(kwargs, "form"))
    from typing import Callable, Literal, Sequence, Any, TYPE_CHECKING
    from gradio.blocks import Block
    if TYPE_CHECKING:
        from gradio.components import Timer
        from gradio.components.base import Component


class FormGroup(gr.Group, FormComponent):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **_classes(kwargs, "form"))
    from typing import Callable, Literal, Sequence, Any, TYPE_CHECKING
    from gradio.blocks import Block
    if TYPE_CHECKING:
        from gradio.components import Timer
        from gradio.components.base import Component


class FormHTML(gr.HTML, FormComponent):
    pass
    from typing import Callable, Literal, Sequence, Any, TYPE_CHECKING
    from gradio.blocks import Block
    if TYPE_CHECKING:
        from gradio.components import Timer
        from gradio.components.base import Component


class DropdownMulti(gr.Dropdown, FormComponent):
    def __init__(self, **kwargs):
        super().__init__(multiselect=True, **kwargs)
    from typing import Callable, Literal, Sequence, Any, TYPE_CHECKING
    from gradio.blocks import Block
    if TYPE_CHECKING:
        from gradio.components import Timer
        from gradio.components.base import Component


class DropdownEditable(gr.Dropdown, FormComponent):
    def __init__(self, **kwargs):
        super().__init__(allow_custom_value=True, **kwargs)
    from typing import Callable, Literal, Sequence, Any, TYPE_CHECKING
    from gradio.blocks import Block
    if TYPE_CHECKING:
        from gradio.components import Timer
        from gradio.components.base import Component


class InputAccordion(gr.Checkbox):
    """A1111's InputAccordion: an accordion whose on/off checkbox is the component (its value, a bool,
    becomes a script arg). Use as `with InputAccordion(False, label="My feature") as enabled: ...`."""

    def __init__(self, value: bool = False, **kwargs):
        label = kwargs.pop("label", "")
        elem_id = kwargs.pop("elem_id", None) or f"input-accordion-{next(_ids)}"
        self.accordion = gr.Accordion(label, open=bool(value), elem_id=f"{elem_id}-accordion")
        with self.accordion:
            super().__init__(value=value, label=f"Enable {label}".strip(), elem_id=elem_id, **kwargs)

    def __enter__(self):
        self.accordion.__enter__()
        return self

    def __exit__(self, *exc):
        return self.accordion.__exit__(*exc)
    from typing import Callable, Literal, Sequence, Any, TYPE_CHECKING
    from gradio.blocks import Block
    if TYPE_CHECKING:
        from gradio.components import Timer
        from gradio.components.base import Component