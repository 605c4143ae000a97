"""`python -m mmdiffusion v2a CKPT VIDEO --out DIR`: generate the soundtrack of a given video.

Reads one clip of video (from `--start` seconds; any sound in it is ignored) and completes it with
generated audio (see `conditional.py`).
"""
from .conditional import conditional_command

add_arguments, main = conditional_command("video")
