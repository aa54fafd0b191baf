"""Sam2Rad: a frozen Segment-Anything-family backbone driven by a trained Prompt Predictor Network.

Import-light on purpose: heavy modules (torch models) load when used. Never imports pydicom,
highdicom, prefect, torchvision or timm.
"""

__version__ = "0.1.0"
