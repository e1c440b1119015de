"""What a pass writes besides boxes: rasters written block by block, polygons, evaluation against truth."""
