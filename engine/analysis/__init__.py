"""Image analyses built on the model runtimes: classification (more with later issues)."""
