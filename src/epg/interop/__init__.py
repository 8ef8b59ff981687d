"""Reading and writing other layouts: the authors' released checkpoints (`official`)."""
