"""Sam2Rad: a frozen SAM-family backbone whose prompts come from a trained Prompt Predictor Network.

Modes of `Sam2Rad.predict`:
  auto    PPN prompts only (the nightly pipeline; no human in the loop);
  semi    PPN prompts plus a reader's points / box / mask for a class (a user box replaces the
          predicted one, points are added); the cached image encoding is reused, only the decoder runs;
  manual  the reader's prompts only: exactly the plain backbone with that prompt (for labelling).
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .backbones.base import Backbone, DecoderOutput, FeaturePyramid, ImageGeometry
from .confidence import ConfidenceReference
from .batched_decode import DecodedRows, Prediction, cat_pyramids, predictions_from_rows
from .ppn import PPNConfig, PPNOutput, build_ppn
from .mask_parts import DEFAULT_MIN_PART_FRACTION, auto_base
from .mask_box import DEFAULT_MARGIN_PX, boxes_from_logits, grow_boxes_to_clicks
from .refine import MaskRefiner, RefinerConfig, click_maps
from .flip_tta import mean_with_mirrored, mirror_input
from .prompts import Prompts, validate_image  # noqa: F401 - Prompts is part of this module's API
from .click_edit import DEFAULT_CLICK_REACH_PX
from .edge_click import HOLD_WINDOW_PX
from .semi_edit import ClickEditSettings, edit_with_clicks
from .encoded_image import EncodedImage, image_key

Mode = Literal["auto", "semi", "manual"]
MODES: tuple[str, ...] = ("auto", "semi", "manual")


@dataclass
class ForwardOutput:
    """The differentiable path's result; rows are (image, class) pairs, image-major."""

    ppn: PPNOutput
    logits: torch.Tensor  # (N, 1, S', S') final mask logits (refined where the model has a refiner)
    decoder_logits: torch.Tensor  # (N, 1, 4h, 4w) the frozen decoder's own logits
    iou: torch.Tensor  # (N,)
    object_logit: torch.Tensor | None  # (N,) where the backbone predicts one
    boxes_px: torch.Tensor  # (N, 4) the box prompt the decoder was given, model pixels


def grey_input(pixels: torch.Tensor) -> torch.Tensor:
    """(B, 3, S, S) normalised model input -> (B, 1, S, S): what the refiner looks at."""
    return pixels.mean(dim=1, keepdim=True)


class Sam2Rad(nn.Module):
    def __init__(self, backbone: Backbone, ppn_config: PPNConfig = PPNConfig(),
                 class_names: Sequence[str] = ("bone",), cache_size: int = 8,
                 refiner_config: RefinerConfig | None = None):
        super().__init__()
        if len(class_names) != ppn_config.num_classes:
            raise ValueError(f"{len(class_names)} class names for {ppn_config.num_classes} PPN classes")
        self.backbone = backbone.freeze()
        self.ppn = build_ppn(ppn_config, backbone)
        self.refiner_config = refiner_config or RefinerConfig(enabled=False)
        self.refiner = MaskRefiner(self.refiner_config, backbone.embed_dim) if self.refiner_config.enabled else None
        self.class_names = tuple(class_names)
        self.cache_size = cache_size
        self._cache: OrderedDict[str, EncodedImage] = OrderedDict()
        self.encoder_calls = 0  # images encoded so far (the semi-mode contract is checked on it)
        self.mask_threshold = 0.0
        # auto and semi prompt the decoder twice: the second time with the first mask's extent.
        self.box_from_mask_margin_px: float | None = DEFAULT_MARGIN_PX
        # A foreground click outside the box grows the box to hold it (+ margin); None: boxes stay.
        self.click_box_margin_px: float | None = DEFAULT_MARGIN_PX
        # auto drops parts under this fraction of the largest, and far weaker ones (sam2rad/mask_parts.py); None: keep all.
        self.min_part_fraction: float | None = DEFAULT_MIN_PART_FRACTION
        # semi: a reader's clicks keep only the changes connected to them (sam2rad/click_edit.py); None: the
        # whole re-decoded mask is taken.
        self.click_reach_px: float | None = DEFAULT_CLICK_REACH_PX
        # A point click the decoder left wrong moves the nearest edge to it, tapering off over this many
        # logit columns either side (sam2rad/edge_click.py hold_point_clicks); None: it does not.
        self.hold_window_px: float | None = HOLD_WINDOW_PX
        self.flip_test_time = False  # auto also decodes the mirrored input (sam2rad/flip_tta.py); 2x encoder
        self.logit_dropout = 0.0  # set by the Trainer (TrainConfig.refiner_logit_dropout); never saved
        # The scores this model gives its training images (sam2rad/confidence.py): set by the Trainer,
        # kept in the card; None for untrained models and older cards.
        self.confidence_reference: ConfidenceReference | None = None

    @property
    def num_classes(self) -> int:
        return self.ppn.cfg.num_classes

    @property
    def device(self) -> torch.device:
        return self.backbone.prompt_encoder.no_mask_embed.weight.device

    def trainable_parameters(self) -> list[nn.Parameter]:
        modules = [self.ppn] + ([self.refiner] if self.refiner is not None else [])
        return [p for m in modules for p in m.parameters() if p.requires_grad]

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """What a checkpoint holds: the PPN's tensors, and the refiner's under 'refiner.'."""
        state = dict(self.ppn.state_dict())
        if self.refiner is not None:
            state.update({f"refiner.{k}": v for k, v in self.refiner.state_dict().items()})
        return state

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> tuple[list[str], list[str]]:
        """Inverse of trainable_state; returns (missing, unexpected) key lists."""
        ppn_state = {k: v for k, v in state.items() if not k.startswith("refiner.")}
        ref_state = {k[len("refiner."):]: v for k, v in state.items() if k.startswith("refiner.")}
        missing, unexpected = self.ppn.load_state_dict(ppn_state, strict=False)
        missing, unexpected = list(missing), list(unexpected)
        if self.refiner is not None:
            m, u = self.refiner.load_state_dict(ref_state, strict=False)
            missing += [f"refiner.{k}" for k in m]
            unexpected += [f"refiner.{k}" for k in u]
        else:
            unexpected += [f"refiner.{k}" for k in ref_state]
        return missing, unexpected

    # --- encoding (cached: the backbone is frozen, so an image's features never change) ---------
    @torch.no_grad()
    def encode(self, images: Sequence[np.ndarray]) -> list[EncodedImage]:
        keys = [image_key(img) for img in images]
        flip = self.flip_test_time
        todo = [i for i, k in enumerate(keys) if k not in self._cache or (flip and self._cache[k].mirrored is None)]
        if todo:
            pixels, geoms = self.backbone.preprocess([images[i] for i in todo])
            feats = self.backbone.encode(pixels)
            feats.image = grey_input(pixels)
            back = self.backbone.encode(mirror_input(pixels)) if flip else None
            if back is not None:
                back.image = mirror_input(feats.image)
            self.encoder_calls += len(todo) * (2 if flip else 1)
            for row, i in enumerate(todo):
                self._cache[keys[i]] = EncodedImage(feats.select([row]), geoms[row],
                                                    mirrored=None if back is None else back.select([row]))
                self._cache.move_to_end(keys[i])
        out = [self._cache[k] for k in keys]
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return out

    def clear_cache(self) -> None:
        self._cache.clear()

    def adopt_encoding(self, image: np.ndarray, features: FeaturePyramid, geometry: ImageGeometry) -> None:
        """Take `features` (one row, such as the training cache's) as `image`'s encoding: no encoder pass."""
        key = image_key(image)
        self._cache[key] = EncodedImage(features.detach_to(self.device), geometry)
        self._cache.move_to_end(key)

    # --- the differentiable path (training and auto/semi inference) -----------------------------
    def prompts_from_ppn(self, ppn_out: PPNOutput, boxes_px: torch.Tensor | None = None,
                         clicks: tuple[torch.Tensor, torch.Tensor] | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """PPN output -> (sparse, dense, box_px) for the frozen decoder.

        boxes_px (N, 4) in model pixels replaces the predicted box where given (a reader's box in semi
        mode, the ground-truth box in part of training); NaN rows keep the prediction. clicks: boxes
        grow to hold the foreground clicks (`click_box_margin_px`).
        """
        size = float(self.backbone.input_size)
        box_px = ppn_out.box_norm * size
        if boxes_px is not None:
            keep = torch.isnan(boxes_px).any(dim=1, keepdim=True)
            box_px = torch.where(keep, box_px, torch.nan_to_num(boxes_px))
        if clicks is not None:
            box_px = self._grow_to_clicks(box_px, clicks)
        pe = self.backbone.prompt_encoder
        box_emb = pe._embed_boxes(box_px)  # frozen encoder, gradients still reach the PPN's box
        sparse = torch.cat([box_emb, ppn_out.extra_tokens], dim=1)
        mask_in = ppn_out.mask_logits
        if tuple(mask_in.shape[-2:]) != tuple(pe.mask_input_size):
            mask_in = F.interpolate(mask_in, size=pe.mask_input_size, mode="bilinear", align_corners=False)
        dense = pe._embed_masks(mask_in)
        return sparse, dense, box_px

    def forward(self, features: FeaturePyramid, boxes_px: torch.Tensor | None = None,
                clicks: tuple[torch.Tensor, torch.Tensor] | None = None,
                ppn_out: PPNOutput | None = None) -> ForwardOutput:
        """Training/auto path, one row per (image, class).

        clicks: (coords (N, P, 2) in model pixels, labels (N, P)); label -1 marks no click. Clicked
        rows are decoded as semi mode decodes them: [points, box, extra tokens].
        ppn_out: the PPN's output on these features, where a first pass already has it.
        """
        ppn_out = self.ppn(features) if ppn_out is None else ppn_out
        sparse, dense, box_px = self.prompts_from_ppn(ppn_out, boxes_px, clicks)
        rows = self._class_rows(features.batch_size)
        feats = features.select(rows) if self.num_classes > 1 else features
        clicked = None if clicks is None else (clicks[1] >= 0).any(dim=1)
        if clicked is None or not clicked.any():
            dec = self.backbone.decode(feats, sparse, dense)
            logits, iou, obj = dec.low_res_logits, dec.iou, dec.object_logit
        else:
            # Clicked rows carry more sparse tokens, so the two groups are decoded separately.
            coords, labels = clicks
            idx_click, idx_plain = clicked.nonzero()[:, 0], (~clicked).nonzero()[:, 0]
            points = self.backbone.prompt_encoder._embed_points(coords[idx_click], labels[idx_click], pad=False)
            groups = [(idx_click, torch.cat([points, sparse[idx_click]], dim=1))]
            if len(idx_plain):
                groups.append((idx_plain, sparse[idx_plain]))
            outs = [self.backbone.decode(feats.select(idx), s, dense[idx]) for idx, s in groups]
            back = torch.argsort(torch.cat([idx for idx, _ in groups]))  # grouped order -> row order
            logits = torch.cat([o.low_res_logits for o in outs])[back]
            iou = torch.cat([o.iou for o in outs])[back]
            obj = None if outs[0].object_logit is None else torch.cat([o.object_logit for o in outs])[back]
        refined = self.refine(feats, logits, clicks)
        return ForwardOutput(ppn_out, refined, logits, iou, obj, box_px)

    def refine(self, feats: FeaturePyramid, logits: torch.Tensor,
               clicks: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """The refiner's logits at model-input size (the decoder's as they are without a refiner)."""
        if self.refiner is None:
            return logits
        if feats.image is None:
            raise ValueError("the mask refiner needs the model input: encode through Sam2Rad.encode or the training cache")
        n, size = logits.shape[0], feats.image.shape[-1]
        if self.training and self.logit_dropout > 0:
            # Training only: some rows hide the decoder's opinion (logits 0), so the refiner also
            # learns to segment from the image and embedding where the decoder is wrong.
            hide = torch.rand(n, 1, 1, 1, device=logits.device) < self.logit_dropout
            logits = torch.where(hide, torch.zeros_like(logits), logits)
        coords, labels = clicks if clicks is not None else (None, None)
        image, sigma, side = feats.image, self.refiner_config.click_sigma_px, size
        cap = self.refiner_config.max_side
        if cap is not None and size > cap:  # work at `cap`, hand back logits at the input size
            side, scale = cap, cap / size
            image = F.interpolate(image, size=(cap, cap), mode="area")
            coords = None if coords is None else coords * scale
            sigma = sigma * scale
        maps = click_maps(coords, labels, n, side, sigma, logits.device)
        refined = self.refiner(image, logits, maps, feats.image_embedding)
        if side != size:
            refined = F.interpolate(refined, size=(size, size), mode="bilinear", align_corners=False)
        return refined

    def _class_rows(self, batch: int) -> torch.Tensor:
        return torch.arange(batch, device=self.device).repeat_interleave(self.num_classes)

    # --- public inference API -------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, images: np.ndarray | Sequence[np.ndarray], mode: Mode = "auto",
                prompts: Prompts | Sequence[Prompts] | Sequence[Sequence[Prompts]] | None = None,
                ) -> list[Prediction]:
        """Segment images; returns one Prediction per image (masks at the source resolution).

        prompts: for one image, a Prompts or a list of Prompts (one per class to correct); for several
        images, a list with one such entry per image. Required for manual, optional for semi.
        """
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        single = isinstance(images, np.ndarray)
        image_list = [images] if single else list(images)
        if not image_list:
            raise ValueError("no images given")
        for i, img in enumerate(image_list):
            validate_image(img, f"image {i}" if not single else "image")
        per_image = self._normalise_prompts(prompts, len(image_list), mode)
        encoded = self.encode(image_list)
        self.eval()
        if mode == "auto":  # every (image, class) row in one call: the training path, batched
            rows = self._decode_auto(cat_pyramids([e.features for e in encoded], self.device),
                                     self._mirrored_batch(encoded))
            self._remember_auto(encoded, rows)
            return predictions_from_rows(rows, [e.geometry for e in encoded], self.backbone, mode,
                                         self.class_names, self.mask_threshold, self.min_part_fraction)
        # A reader's prompts differ from image to image (and from class to class): one image at a time.
        return [predictions_from_rows(self._decode_prompted(enc, mode, p), [enc.geometry], self.backbone, mode,
                                      self.class_names, self.mask_threshold)[0]
                for enc, p in zip(encoded, per_image)]

    def _normalise_prompts(self, prompts, n_images: int, mode: str) -> list[dict[int, Prompts]]:
        if prompts is None:
            entries: list = [None] * n_images
        elif isinstance(prompts, Prompts):
            entries = [prompts] if n_images == 1 else None
            if entries is None:
                raise ValueError(f"one Prompts given for {n_images} images; pass one entry per image")
        else:
            prompts = list(prompts)
            if n_images == 1 and all(isinstance(p, Prompts) for p in prompts):
                entries = [prompts]
            elif len(prompts) != n_images:
                raise ValueError(f"{len(prompts)} prompt entries for {n_images} images")
            else:
                entries = prompts
        out = []
        for entry in entries:
            items = [] if entry is None else ([entry] if isinstance(entry, Prompts) else list(entry))
            by_class: dict[int, Prompts] = {}
            for p in items:
                if not isinstance(p, Prompts):
                    raise ValueError(f"prompts must be sam2rad.model.Prompts, got {type(p).__name__}")
                if not 0 <= p.class_index < self.num_classes:
                    raise ValueError(f"prompt class_index {p.class_index} out of range 0..{self.num_classes - 1}")
                by_class[p.class_index] = p
            if mode == "manual" and (not by_class or any(p.empty or p.surface_clicks for p in by_class.values())):
                raise ValueError("manual mode needs a box, points or a mask for each class to segment "
                                 "(edge clicks move auto's mask: semi mode only)")
            if mode == "auto" and by_class:
                raise ValueError("auto mode takes no prompts; use mode='semi' to add corrections")
            out.append(by_class)
        return out

    def _to_model_space(self, p: Prompts, geom: ImageGeometry):
        s = geom.scale
        points = None
        if p.points is not None:
            coords = torch.as_tensor(p.points * s, dtype=torch.float32, device=self.device)[None]
            points = (coords, torch.as_tensor(p.labels, device=self.device)[None])
        box = None if p.box is None else torch.as_tensor(p.box * s, dtype=torch.float32, device=self.device)[None]
        mask = None
        if p.mask is not None:
            m = np.asarray(p.mask, dtype=np.float32)
            if m.shape != (geom.height, geom.width):
                raise ValueError(f"prompt mask shape {m.shape} != image shape {(geom.height, geom.width)}")
            # Mask prompts are logits in SAM; a binary prior becomes +/-10.
            t = torch.as_tensor(m, device=self.device)
            t = (t * 20 - 10) if m.max() <= 1 else t
            size = self.backbone.input_size
            rh, rw = geom.resized_hw
            padded = torch.full((1, 1, size, size), -10.0, device=self.device)
            padded[..., :rh, :rw] = F.interpolate(t[None, None], size=(rh, rw), mode="bilinear", align_corners=False)
            mask = F.interpolate(padded, size=self.backbone.prompt_encoder.mask_input_size, mode="bilinear",
                                 align_corners=False)
        return points, box, mask

    def _grow_to_clicks(self, box_px: torch.Tensor, clicks: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Boxes grown to hold their add-clicks (sam2rad/mask_box.py), within the input; as they are when
        `click_box_margin_px` is None."""
        if self.click_box_margin_px is None:
            return box_px
        grown = grow_boxes_to_clicks(box_px, clicks[0], clicks[1], self.click_box_margin_px)
        return grown.clamp(0, float(self.backbone.input_size))

    def _mask_boxes(self, out: ForwardOutput) -> torch.Tensor | None:
        """Second-pass box prompts from a first pass's masks (None when the model does not cascade)."""
        if self.box_from_mask_margin_px is None:
            return None
        return boxes_from_logits(out.logits, self.backbone.input_size, self.box_from_mask_margin_px)

    def _mirrored_batch(self, encoded: Sequence[EncodedImage]) -> FeaturePyramid | None:
        if not self.flip_test_time or any(e.mirrored is None for e in encoded):
            return None
        return cat_pyramids([e.mirrored for e in encoded], self.device)  # type: ignore[misc]

    def _decode_auto(self, feats: FeaturePyramid, mirrored: FeaturePyramid | None = None) -> DecodedRows:
        if mirrored is not None:  # test-time flip: the mean of both decodes (sam2rad/flip_tta.py)
            return mean_with_mirrored(self._decode_auto(feats), self._decode_auto(mirrored))
        out = self(feats)
        boxes = self._mask_boxes(out)
        if boxes is not None:  # prompt again with the first mask's own extent (sam2rad/mask_box.py)
            out = self(feats, boxes_px=boxes, ppn_out=out.ppn)  # the same features: the same PPN output
        c = self.num_classes
        return DecodedRows(image_index=[i for i in range(feats.batch_size) for _ in range(c)],
                           class_index=list(range(c)) * feats.batch_size, logits=out.logits,
                           object_logit=out.object_logit, boxes_px=out.boxes_px)

    def _remember_auto(self, encoded: Sequence[EncodedImage], rows: DecodedRows) -> None:
        """Keep each image's auto result with its encoding: semi starts from it (no decode again)."""
        index = torch.as_tensor(rows.image_index, device=rows.logits.device)
        for i, enc in enumerate(encoded):
            sel = (index == i).nonzero()[:, 0]
            enc.auto_logits, enc.auto_bases = rows.logits[sel].detach(), {}
            if self.box_from_mask_margin_px is not None:
                enc.auto_boxes = rows.boxes_px[sel].detach()

    def _auto_for_semi(self, enc: EncodedImage) -> None:
        """auto's second-pass boxes and final logits for this encoding, once (not per click)."""
        if enc.auto_logits is None:
            self._remember_auto([enc], self._decode_auto(enc.features, self._mirrored_batch([enc])))

    def _edit_at_clicks(self, enc: EncodedImage, k: int, logits: torch.Tensor, p: Prompts) -> torch.Tensor:
        """The reader's clicks as edits of auto's mask (sam2rad/semi_edit.py). With a reader's box or mask the
        decoded mask is taken whole."""
        whole = p.box is not None or p.mask is not None or self.click_reach_px is None or enc.auto_logits is None
        key = (self.mask_threshold, self.min_part_fraction)
        if not whole and key not in enc.auto_bases:  # auto's mask as auto showed it: once per image, not per click
            enc.auto_bases[key] = [auto_base(row[None], *key) for row in enc.auto_logits]
        settings = ClickEditSettings(self.backbone.input_size, self.mask_threshold, self.click_reach_px, self.hold_window_px)
        return edit_with_clicks(logits if whole else enc.auto_bases[key][k], logits, p, enc.geometry, settings, whole)

    def _decode_prompted(self, enc: EncodedImage, mode: str, by_class: dict[int, Prompts]) -> DecodedRows:
        """semi and manual: one image, rows decoded one by one (their numbers of point tokens differ)."""
        be = self.backbone
        rows: list[tuple[int, DecoderOutput, torch.Tensor, torch.Tensor]] = []  # class, decoded, logits, box
        if mode == "manual":
            for k, p in sorted(by_class.items()):  # only the classes the reader prompted
                pts, box, mask = self._to_model_space(p, enc.geometry)
                s, d = be.encode_prompts(points=pts, boxes=box, mask_logits=mask)
                out = be.decode(enc.features, s, d)
                no_box = torch.full((1, 4), torch.nan, device=self.device)
                # Manual mode is the plain backbone: no refiner, whatever the checkpoint holds.
                rows.append((k, out, out.low_res_logits, no_box if box is None else box))
        else:
            self._auto_for_semi(enc)
            ppn_out = self.ppn(enc.features)
            sparse, dense, box_px = self.prompts_from_ppn(ppn_out, enc.auto_boxes)
            for k in range(self.num_classes):
                s_k, d_k, pts = sparse[k:k + 1], dense[k:k + 1], None
                p = by_class.get(k)
                if p is not None:  # semi: the reader's corrections on top of the predicted prompts
                    pts, box, mask = self._to_model_space(p, enc.geometry)
                    if box is not None:  # the reader's box is used as drawn
                        box_px[k:k + 1] = box
                    elif pts is not None:
                        box_px[k:k + 1] = self._grow_to_clicks(box_px[k:k + 1], pts)
                    user_sparse, _ = be.encode_prompts(points=pts, boxes=box_px[k:k + 1])
                    s_k = torch.cat([user_sparse, ppn_out.extra_tokens[k:k + 1]], dim=1)
                    if mask is not None:
                        d_k = be.prompt_encoder._embed_masks(mask)
                out = be.decode(enc.features, s_k, d_k)
                logits = self.refine(enc.features, out.low_res_logits, pts)
                if p is not None and (pts is not None or p.surface_clicks):
                    logits = self._edit_at_clicks(enc, k, logits, p)
                rows.append((k, out, logits, box_px[k:k + 1]))
        outs = [out for _, out, _, _ in rows]
        obj = None if outs[0].object_logit is None else torch.cat([o.object_logit for o in outs])
        return DecodedRows(image_index=[0] * len(rows), class_index=[k for k, _, _, _ in rows],
                           logits=torch.cat([lg for _, _, lg, _ in rows]),
                           object_logit=obj, boxes_px=torch.cat([b for _, _, _, b in rows]))


def build_sam2rad(backbone: str | Backbone = "litemedsam", ppn_config: PPNConfig | None = None,
                  class_names: Sequence[str] = ("bone",), refiner_config: RefinerConfig | None = None,
                  **backbone_kwargs) -> Sam2Rad:
    """A Sam2Rad with an untrained PPN (train it, or load a checkpoint with sam2rad.checkpoint).

    refiner_config None means no refiner (the PPN and the frozen decoder alone)."""
    from .backbones import build_backbone

    bb = build_backbone(backbone, **backbone_kwargs) if isinstance(backbone, str) else backbone
    cfg = ppn_config or PPNConfig(num_classes=len(class_names))
    return Sam2Rad(bb, cfg, class_names, refiner_config=refiner_config)
