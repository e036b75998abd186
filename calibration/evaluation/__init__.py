"""Evaluation harness (above the product; nothing in it is imported by the product): pairs, videos (Table 1), motion, reports, FID, media variants."""
