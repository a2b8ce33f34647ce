"""Catalog data (GPU specs, cloud offers), shipped inside the package as `cascadia_sky.catalogs`.

Only CSV/Markdown data lives here; the loader is `cascadia_sky.catalog`.
"""
