"""Series files -> checked Volume -> analyzers -> fusion -> Findings. No network, no database."""
