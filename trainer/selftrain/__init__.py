"""Self-training of the U-Net on unlabeled real photos with online label rectification (A2S)."""
