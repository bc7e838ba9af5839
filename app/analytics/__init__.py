"""DuckDB over the Parquet lake: views, reports, training sets."""
