"""The one grounding pipeline every front end calls: decoding uploads, the scheduler, the service."""
