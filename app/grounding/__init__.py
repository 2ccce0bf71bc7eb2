"""The pure grounding core: answer text to boxes in original-image pixels, and drawing them. No I/O."""
