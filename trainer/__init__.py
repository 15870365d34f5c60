"""Trains the segmentation U-Net on (image, mask) pairs streamed from WebDataset shards."""
