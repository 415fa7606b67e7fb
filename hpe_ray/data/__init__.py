"""Data sources (synthetic, Human3.6M, BVH), WebDataset shards and the streaming reader."""
