"""Storage engine: drives, erasure coding and the quorum object layer."""
