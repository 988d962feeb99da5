"""FastAPI + FAISS + Redis inference service for MMSSL artifacts (never imports torch)."""
