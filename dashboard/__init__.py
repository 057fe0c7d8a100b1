"""Streamlit dashboard (torch-free): grade scans, compare strategies, explore errors."""
