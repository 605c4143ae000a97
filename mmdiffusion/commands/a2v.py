"""`python -m mmdiffusion a2v CKPT AUDIO --out DIR`: generate video for a given soundtrack.

Reads one clip's duration of audio (from `--start` seconds) from any audio or video file and
completes it with generated video (see `conditional.py`).
"""
from .conditional import conditional_command

add_arguments, main = conditional_command("audio")
