"""kmax package."""
