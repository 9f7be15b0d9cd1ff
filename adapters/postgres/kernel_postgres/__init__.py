"""PostgreSQL for trio-kernel (placeholder while building)."""
