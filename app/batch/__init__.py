"""Ground many images or the frames of a video: files in, JSONL / COCO / annotated media out."""
