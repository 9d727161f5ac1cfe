"""Data: sources (digits, image folder, CelebA, archive), preparation, splits, lineage."""
