"""videocups-ray: unsupervised video panoptic segmentation (VideoCUPS) on Ray."""

__version__ = "0.1.0"
