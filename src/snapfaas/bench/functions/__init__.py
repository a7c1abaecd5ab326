"""Reference functions for `snapfaas bench` (each directory is one deployment package)."""
