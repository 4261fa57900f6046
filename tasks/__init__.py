"""Build, compress, boot-test, describe and publish Debian cloud images.

One module per concern: ``matrix`` reads matrix.yaml into cells, ``graph``
turns cells into doit tasks, and each stage has its own module (``fai``,
``compress``, ``boottest``, ``manifest``, ``storage``).
"""
