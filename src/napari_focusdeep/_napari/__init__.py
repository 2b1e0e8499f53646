"""The napari face of napari-focusdeep: reader, writer, Fuse widget and sample data.

Thin by design: these modules translate between napari layers and the core
(:class:`~napari_focusdeep.stack.Stack`, :func:`~napari_focusdeep.fusion.fuse_iter`,
:mod:`napari_focusdeep.io`) and import the core only inside functions, so napari
reading the manifest (or importing these modules) never imports OpenCV or torch.
"""
