"""A reader's corrections to one instance: clicks and boxes per frame, undo/redo, and the masks they give.

Coordinates are full-frame pixels (x = column, y = row), as the viewer shows the frame; the model sees
the frame cropped to its imaging region, so prompts are shifted into crop pixels here. In "semi" mode
the model adds the reader's prompts to its own (the encoding is cached: only the decoder re-runs); in
"manual" mode (started from scratch) only the reader's prompts count.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Protocol, Sequence

import numpy as np

from pipeline.us_records import UsFrame

EDIT_MODES = ("semi", "manual")
MAX_PROMPTS_PER_FRAME = 64


class ReviewInputError(ValueError):
    """A correction the page should not have sent (the web layer answers 4xx with this message)."""


@dataclass(frozen=True)
class Click:
    x: float
    y: float
    foreground: bool
    edge: bool = False  # an edge click: moves that edge of the whole surface to here (sam2rad/edge_click.py)
    end: bool = False  # an end click: the surface ends here (cut back to it, or extended to it)
    shift: bool = False  # a shift click: the nearest edge goes here, the whole surface with it

    @property
    def kind(self) -> str:
        return "end" if self.end else "edge" if self.edge else "shift" if self.shift else "point"


@dataclass(frozen=True)
class FramePrompts:
    """A frame's corrections so far (immutable: undo keeps old ones)."""

    clicks: tuple[Click, ...] = ()
    box: tuple[float, float, float, float] | None = None

    @property
    def empty(self) -> bool:
        return not self.clicks and self.box is None


@dataclass(frozen=True)
class EditState:
    mode: str = "semi"
    frames: tuple[tuple[int, FramePrompts], ...] = ()  # (frame number, prompts), frames with prompts only

    def prompts(self, frame_number: int) -> FramePrompts:
        return dict(self.frames).get(frame_number, FramePrompts())

    def with_prompts(self, frame_number: int, prompts: FramePrompts) -> "EditState":
        frames = dict(self.frames)
        frames[frame_number] = prompts
        return replace(self, frames=tuple(sorted(frames.items())))


class PromptModel(Protocol):
    def predict(self, images, mode: str = "auto", prompts=None) -> list: ...


MakePrompts = Callable[..., object]  # sam2rad.model.Prompts (points, labels, box, edges, ends, shifts, order)


@dataclass
class InstanceEdit:
    """The editing state of one instance by one reader, with undo/redo.

    `ai_masks` (frames, rows, cols, classes) bool are the nightly masks: a frame the reader did not
    touch keeps them.
    """

    sop_uid: str
    frames: Sequence[UsFrame]
    ai_masks: np.ndarray
    model: PromptModel
    make_prompts: MakePrompts
    state: EditState = field(default_factory=EditState)
    corrections: int = 0  # clicks and boxes the reader made (undone ones included)
    _undo: list[EditState] = field(default_factory=list)
    _redo: list[EditState] = field(default_factory=list)
    _masks: dict = field(default_factory=dict)

    # -- geometry ----------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        return self.frames[0].image.shape  # (rows, cols)

    def frame(self, frame_number: int) -> UsFrame:
        if not 1 <= frame_number <= len(self.frames):
            raise ReviewInputError(f"frame {frame_number} does not exist: the instance has frames 1..{len(self.frames)}")
        return self.frames[frame_number - 1]

    def _check_point(self, frame: UsFrame, x: float, y: float) -> None:
        rows, cols = frame.image.shape
        if not (np.isfinite(x) and np.isfinite(y)) or not (0 <= x < cols and 0 <= y < rows):
            raise ReviewInputError(f"point ({x:g}, {y:g}) is outside the frame (x 0..{cols - 1}, y 0..{rows - 1})")
        b = frame.crop_bounds
        if not (b.min_x0 <= x <= b.max_x1 and b.min_y0 <= y <= b.max_y1):
            raise ReviewInputError(f"point ({x:g}, {y:g}) is outside the imaging region "
                                   f"(x {b.min_x0}..{b.max_x1}, y {b.min_y0}..{b.max_y1})")

    # -- corrections ---------------------------------------------------------------------------
    def _push(self, new_state: EditState) -> None:
        self._undo.append(self.state)
        self._redo.clear()
        self.state = new_state
        self.corrections += 1

    def click(self, frame_number: int, x: float, y: float, foreground: bool = True, edge: bool = False,
              end: bool = False, shift: bool = False) -> np.ndarray:
        """A point click; with `edge` an edge click: the nearest edge of the whole surface, in depth,
        moves to the click (foreground: the bone reaches here; background: it stops before here); with
        `end` an end click: the surface ends here (on the mask it is cut back to the click, beyond its
        end it is extended to the click); with `shift` a shift click: the nearest edge goes to the click as
        with `edge`, and the whole surface moves with it."""
        frame = self.frame(frame_number)
        self._check_point(frame, x, y)
        if edge + end + shift > 1:
            raise ReviewInputError("a click is one of an edge, an end or a shift click, not several")
        if (edge or end or shift) and self.state.mode != "semi":
            kind = "edge" if edge else "end" if end else "shift"
            raise ReviewInputError(f"{kind} clicks edit the AI mask; after 'start from scratch' use points or a box")
        prompts = self.state.prompts(frame_number)
        if len(prompts.clicks) + 1 > MAX_PROMPTS_PER_FRAME:
            raise ReviewInputError(f"at most {MAX_PROMPTS_PER_FRAME} clicks a frame")
        self._push(self.state.with_prompts(
            frame_number, replace(prompts, clicks=prompts.clicks + (Click(float(x), float(y), bool(foreground), bool(edge), bool(end), bool(shift)),))))
        return self.mask(frame_number)

    def draw_box(self, frame_number: int, x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
        frame = self.frame(frame_number)
        x0, x1 = sorted((float(x0), float(x1)))
        y0, y1 = sorted((float(y0), float(y1)))
        self._check_point(frame, x0, y0)
        self._check_point(frame, x1, y1)
        if x1 - x0 < 2 or y1 - y0 < 2:
            raise ReviewInputError("a box must be at least 2 pixels wide and high")
        prompts = self.state.prompts(frame_number)
        self._push(self.state.with_prompts(frame_number, replace(prompts, box=(x0, y0, x1, y1))))
        return self.mask(frame_number)

    def start_from_scratch(self) -> None:
        """Manual mode: the nightly masks and the model's own prompts no longer count."""
        self._push(EditState(mode="manual"))

    def undo(self) -> bool:
        return self._step(self._undo, self._redo)

    def redo(self) -> bool:
        return self._step(self._redo, self._undo)

    def _step(self, source: list, target: list) -> bool:
        """Move back (undo) or forward (redo) one state; False when there is none."""
        if not source:
            return False
        target.append(self.state)
        self.state = source.pop()
        return True

    @property
    def can_undo(self) -> bool:
        return bool(self._undo)

    @property
    def can_redo(self) -> bool:
        return bool(self._redo)

    # -- masks --------------------------------------------------------------------------------
    def _model_prompts(self, frame: UsFrame, prompts: FramePrompts):
        b = frame.crop_bounds
        box = None if prompts.box is None else np.array(
            [prompts.box[0] - b.min_x0, prompts.box[1] - b.min_y0, prompts.box[2] - b.min_x0,
             prompts.box[3] - b.min_y0], dtype=np.float32)
        kinds, order = {}, tuple(c.kind for c in prompts.clicks)
        for kind in ("point", "edge", "end", "shift"):
            clicks = [c for c, k in zip(prompts.clicks, order) if k == kind]
            kinds[kind] = (np.array([[c.x - b.min_x0, c.y - b.min_y0] for c in clicks], dtype=np.float32) if clicks else None,
                           np.array([1 if c.foreground else 0 for c in clicks], dtype=np.int64) if clicks else None)
        return self.make_prompts(points=kinds["point"][0], labels=kinds["point"][1], box=box,
                                 edges=kinds["edge"][0], edge_labels=kinds["edge"][1], ends=kinds["end"][0],
                                 shifts=kinds["shift"][0], shift_labels=kinds["shift"][1], order=order or None)  # each click edits the mask the reader saw

    def warm(self, frame_number: int) -> None:
        """Encode the frame now (the first view's cost), so the reader's first click runs the decoder only."""
        self.model.predict([self.frame(frame_number).model_input], "auto")

    def mask(self, frame_number: int) -> np.ndarray:
        """The frame's current masks (rows, cols, classes) bool on the full frame."""
        frame = self.frame(frame_number)
        prompts = self.state.prompts(frame_number)
        if prompts.empty:
            if self.state.mode == "semi":
                return self.ai_masks[frame_number - 1]
            return np.zeros_like(self.ai_masks[frame_number - 1])
        key = (frame_number, self.state.mode, prompts)
        if key not in self._masks:
            pred = self.model.predict([frame.model_input], self.state.mode,
                                      [self._model_prompts(frame, prompts)])[0]
            masks = np.stack([frame.mask_to_full_frame(m) for m in pred.masks], axis=-1)
            if len(self._masks) > 256:
                self._masks.clear()
            self._masks[key] = masks
        return self._masks[key]

    def all_masks(self) -> np.ndarray:
        """(frames, rows, cols, classes): what an accept writes."""
        return np.stack([self.mask(n) for n in range(1, len(self.frames) + 1)])

    @property
    def touched_frames(self) -> list[int]:
        return [n for n, p in self.state.frames if not p.empty]
