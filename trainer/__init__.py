"""The workload: a fast GPT trainer in the spirit of autoresearch's train.py."""
