"""Runtime network code: the shipped digit classifier and class-conditional U-Net.

Their weights live in ``ray_bilevel/assets/`` (data files only); ``tools/`` rebuilds them.
"""
