"""How an image is built: one module per stage and the parts each stage uses.

imagecheck, imagefacts, initramfs and stepcache also run inside a build
(python3 -m tasks.stages.imagecheck), so this package imports nothing on its own.
"""
